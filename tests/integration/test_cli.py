"""``kubectl train`` (the ``kubectl-train`` console script) against the real control plane.

The plugin runs as a subprocess, as kubectl would run it; ``watch`` also runs in a real
terminal (a tmux pane), whose screen the test reads twice to see the bar move.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetrain.localcluster import ControlPlane, find_binary
from kubetrain.localcluster.nodeagent import NodeAgent
from kubetrain.sdk import Client
from tests.integration import helpers, kubelet
from tests.integration.test_operator import bound_claim
from tests.polling import eventually

pytestmark = pytest.mark.usefixtures("operator")

FULL_CELL = "█"


@pytest.fixture
def sdk(cluster: ControlPlane, namespace: str) -> Iterator[Client]:
    with helpers.sdk_client(cluster, namespace) as connected:
        yield connected


class Plugin:
    """Runs ``kubectl-train`` against the test cluster and namespace."""

    def __init__(self, cluster: ControlPlane, namespace: str) -> None:
        self.kubeconfig, self.namespace = str(cluster.kubeconfig), namespace

    def argv(self, *args: str) -> list[str]:
        """Connection flags first, so a command's own ``-n`` overrides them (as in kubectl)."""
        return [str(helpers.plugin()), "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args]

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == expect, f"{args}: rc {done.returncode}\n{done.stderr}"
        assert "\x1b[" not in done.stdout  # piped: no colour, no bars
        return done


@pytest.fixture
def train(cluster: ControlPlane, namespace: str) -> Plugin:
    return Plugin(cluster, namespace)


def _running_job(sdk: Client, core: client.CoreV1Api, namespace: str, name: str) -> str:
    """A job halfway through, with one checkpoint; its worker Pod's name."""
    helpers.create_llm(sdk, core, name)
    pod = helpers.start_worker(core, namespace, name)
    helpers.progress(
        core,
        namespace,
        pod,
        50,
        learningRate=1e-4,
        throughput=1500.0,
        throughputUnit="tokens/s",
        checkpoints=[kubelet.checkpoint("step-50", 1, 50, 1.5)],
    )
    eventually(
        lambda: sdk.get(name).status.latest_checkpoint == "step-50",
        what=f"progress of {name} in status",
    )
    return pod


def test_list_describe_and_checkpoints_show_progress_and_parse(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin, cluster: ControlPlane
) -> None:
    _running_job(sdk, core, namespace, "busy")
    helpers.create_llm(sdk, core, "idle", storage=False, workers=2)

    # Through kubectl itself: it finds the plugin on PATH as `kubectl train` and hands it
    # every argument after the plugin's name.
    path = f"{helpers.plugin().parent}{os.pathsep}{os.environ['PATH']}"
    listing = subprocess.run(
        [
            find_binary("kubectl"),
            "train",
            "-n",
            namespace,
            "list",
            "--kubeconfig",
            train.kubeconfig,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        check=False,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["NAME", "busy", "idle"]
    default = train.run("list", "--namespace", "default")
    assert "No TrainingJobs found in namespace default" in default.stderr

    lines = train.run("list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "EPOCH", "LOSS", "ETA", "COST", "AGE"]
    busy = next(line.split() for line in lines if line.startswith("busy"))
    assert busy[1:5] == ["Running", "50.0%", "1/2", "1.5"]
    assert busy[6].startswith("$")
    assert len(lines) == 3

    data = json.loads(train.run("list", "-o", "json").stdout)
    assert data["kind"] == "TrainingJobList"
    by_name = {item["metadata"]["name"]: item for item in data["items"]}
    assert by_name["busy"]["status"]["progress"]["percentage"] == 50.0
    assert by_name["idle"]["spec"]["resources"]["workers"] == 2
    assert train.run("list", "--status", "running", "-o", "name").stdout.split() == [
        "trainingjob.kubetrain.io/busy"
    ]
    wide = train.run("list", "-A", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:2] == ["NAMESPACE", "NAME"] and "CHECKPOINT" in wide[0]
    assert any(line.split()[:2] == [namespace, "busy"] for line in wide)
    paged = train.run("list", "--limit", "1")
    assert len(paged.stdout.splitlines()) == 2 and "--continue" in paged.stderr

    described = train.run("describe", "busy").stdout
    for expected in (
        "Name:           busy",
        "Phase:          Running (TrainerRunning",
        "Progress:       50.0%",
        "epoch 1/2, step 50/100",
        "Resources:      a100x1, priority normal",
        "Throughput:     1500 tokens/s",
        "Checkpoints:    1 (latest step-50)",
        "*step-50",
        "Conditions:",
    ):
        assert expected in described, f"{expected!r} missing from:\n{described}"
    events = described.split("Events:")[1].splitlines()
    assert events[1].split() == ["TYPE", "REASON", "AGE", "MESSAGE"]
    assert {line.split()[1] for line in events[2:]} >= {"Created"}
    stored = yaml.safe_load(train.run("describe", "busy", "-o", "yaml").stdout)
    assert stored["status"]["phase"] == "Running" and stored["metadata"]["uid"]
    assert "managedFields" not in stored["metadata"]

    table = train.run("checkpoints", "busy").stdout.splitlines()
    assert table[0].split() == ["ID", "EPOCH", "STEP", "LOSS", "SIZE", "AGE"]
    assert table[1].split()[:4] == ["*step-50", "1", "50", "1.5"]
    points = json.loads(train.run("checkpoints", "busy", "-o", "json").stdout)
    assert [p["id"] for p in points] == ["step-50"] and points[0]["sizeBytes"] == 1024

    missing = train.run("describe", "ghost", expect=1)
    assert missing.stderr.startswith("error: ") and '"ghost" not found' in missing.stderr


def test_create_from_a_managed_training_request(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin, tmp_path: Path
) -> None:
    bound_claim(core, namespace, "ds-vision-objects-001", create_claim=True)
    bound_claim(core, namespace, "custom-object-detection-checkpoints", create_claim=False)
    request = {
        "name": "custom-object-detection",
        "modelType": "vision",
        "datasetId": "ds_vision_objects_001",
        "config": {
            "architecture": "yolov8",
            "input_size": [640, 640],
            "num_classes": 80,
            "training": {"epochs": 100, "batch_size": 16, "momentum": 0.937},
            "augmentation": {"mixup": 0.1, "hsv_h": 0.015},
        },
        "gpuType": "a100",
        "maxWorkers": 1,
        "checkpoint": helpers.CHECKPOINT,
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    created = train.run("create", "-f", str(path))
    assert created.stdout == "trainingjob.kubetrain.io/custom-object-detection created\n"
    assert "'yolov8' is not a kubetrain architecture" in created.stderr

    job = sdk.get("custom-object-detection")
    assert job.spec.vision is not None and job.spec.vision.pipeline == "yolox"
    assert job.spec.vision.input_size is not None and job.spec.vision.input_size.width == 640
    assert job.spec.training.momentum == 0.937
    pod = helpers.live_pod(core, namespace, "custom-object-detection")
    claims = {
        v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim
    }
    assert "ds-vision-objects-001" in claims

    again = train.run("create", "-f", str(path), expect=1)
    assert again.stderr.splitlines()[-1] == (
        'error: trainingjobs.kubetrain.io "custom-object-detection" already exists'
    )
    path.write_text(json.dumps({**request, "name": "other", "tags": "one"}))
    bad = train.run("create", "-f", str(path), expect=1)
    assert bad.stderr.splitlines()[-1].startswith("error: spec.tags: ")
    assert [j.metadata.name for j in sdk.list().items] == ["custom-object-detection"]


def test_stop_resume_and_cancel(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin
) -> None:
    _running_job(sdk, core, namespace, "pausable")
    assert train.run("stop", "pausable", "--reason", "quota").stdout.strip() == (
        "trainingjob.kubetrain.io/pausable stopping"
    )
    helpers.finish_stopping(core, namespace, "pausable")
    eventually(lambda: sdk.get("pausable").status.phase == "Stopped", what="phase Stopped")
    assert "Stop reason:    quota" in train.run("describe", "pausable").stdout

    bad = train.run("resume", "pausable", "--from", "step-7", expect=1)
    assert "no checkpoint 'step-7'; available: step-50" in bad.stderr
    assert train.run("resume", "pausable", "--from", "step-50").stdout.strip() == (
        "trainingjob.kubetrain.io/pausable resumed from checkpoint step-50"
    )
    pod = helpers.live_pod(core, namespace, "pausable", attempt=2)
    assert helpers.pod_env(pod)["RESUME_FROM"] == "step-50"

    assert train.run("cancel", "pausable", "--keep-checkpoints").stdout.strip() == (
        "trainingjob.kubetrain.io/pausable deleted; checkpoints kept in "
        "PersistentVolumeClaim pausable-checkpoints"
    )
    assert "not found" in train.run("describe", "pausable", expect=1).stderr


def test_logs_and_estimate(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin
) -> None:
    _running_job(sdk, core, namespace, "chatty")
    # The fake GPU nodes have no kubelet to serve logs: the error says which Pod and why
    # (test_logs_of_a_worker_the_node_agent_runs reads real ones).
    failed = train.run("logs", "chatty", expect=1)
    assert failed.stderr.startswith("error: cannot read the logs of Pod chatty-worker-0-a1:")
    assert "no Pod for worker 3" in train.run("logs", "chatty", "--worker", "3", expect=1).stderr

    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="prices"),
            data={"config.yaml": "catalogue:\n  gpuTypes:\n    h100: {pricePerHour: 4.0}\n"},
        ),
    )
    priced = json.loads(
        train.run(
            "estimate",
            *("--gpu-type", "h100", "--workers", "2", "--gpus-per-worker", "8", "--hours", "1.5"),
            *("--config-namespace", namespace, "--config-map", "prices", "-o", "json"),
        ).stdout
    )
    assert priced["hourlyUSD"] == 64.0 and priced["totalUSD"] == 96.0
    assert priced["source"] == "cluster"
    fallback = train.run("estimate", "--gpu-type", "h100", "--config-map", "no-such-config")
    assert "warning: could not read the GPU catalogue" in fallback.stderr
    assert "Hourly:         $4.50" in fallback.stdout and "defaults" in fallback.stdout
    unknown = train.run("estimate", "--gpu-type", "tpu", expect=1)
    assert "gpuType: 'tpu' is not in the GPU catalogue" in unknown.stderr


def test_logs_of_a_worker_the_node_agent_runs(
    core: client.CoreV1Api, namespace: str, train: Plugin, node_agent: NodeAgent
) -> None:
    script = "for step in range(3):\n    print(f'step {step}')\n"
    pod = helpers.worker_pod_on_agent(core, namespace, "talker", node_agent.node_names[-1], script)
    eventually(
        lambda: core.read_namespaced_pod(pod, namespace).status.phase == "Succeeded",
        timeout=60,
        what="the worker to finish",
    )
    assert train.run("logs", "talker").stdout == "step 0\nstep 1\nstep 2\n"
    assert train.run("logs", "talker", "--tail", "1").stdout == "step 2\n"
    assert train.run("logs", "talker", "-f", "--worker", "0").stdout.count("step") == 3


def test_watch_piped_prints_one_plain_line_per_change(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin
) -> None:
    pod = _running_job(sdk, core, namespace, "piped")
    watcher = subprocess.Popen(
        train.argv("watch", "piped"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in watcher.stdout or []], daemon=True
    )
    reader.start()
    seen: list[str] = []

    def line_with(*tokens: str) -> str:
        def probe() -> str | None:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                return None
            return seen[-1] if all(t in seen[-1].split() for t in tokens) else None

        found: str = eventually(probe, timeout=30, what=f"a line with {tokens}; seen {seen}")
        return found

    try:
        assert line_with("50.0%").split()[:4] == ["piped", "Running", "50.0%", "1/2"]
        helpers.progress(core, namespace, pod, 75)
        assert line_with("75.0%").split()[4] == "75/100"
        helpers.complete(core, namespace, pod)
        assert line_with("Completed", "100.0%")
        assert watcher.wait(timeout=30) == 0
    finally:
        watcher.kill()
        watcher.wait()
    assert seen[0].split() == ["NAME", "PHASE", "PROGRESS", "EPOCH", "STEP", "LOSS", "ETA"]
    assert not any("\x1b" in line for line in seen)


class Tmux:
    """A private tmux server (its own socket) whose one pane runs a command."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("tmux")
        assert binary, "tmux is needed for the terminal test (apt-get install tmux)"
        config = tmp / "tmux.conf"
        config.write_text("set -g remain-on-exit on\n")  # keep the last screen to read
        self.base = [binary, "-u", "-S", str(tmp / "tmux.sock"), "-f", str(config)]
        self.status_file = tmp / "exit-status"

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout

    def start(self, argv: list[str]) -> None:
        # The shell records the exit status: tmux's own pane_dead_status can lag far behind.
        command = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status_file))}"
        self._tmux("new-session", "-d", "-s", "t", "-x", "110", "-y", "12", command)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def exit_status(self) -> int | None:
        text = self.status_file.read_text() if self.status_file.is_file() else ""
        return int(text) if text.strip() else None

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False, timeout=30)


def test_watch_in_a_terminal_redraws_a_moving_bar(
    sdk: Client, core: client.CoreV1Api, namespace: str, train: Plugin, tmp_path: Path
) -> None:
    pod = _running_job(sdk, core, namespace, "live")
    helpers.progress(core, namespace, pod, 60)  # on from the running job's step 50
    eventually(lambda: sdk.get("live").status.progress.percentage == 60.0, what="60% in status")  # type: ignore[union-attr]
    tmux = Tmux(tmp_path)
    tmux.start(train.argv("watch"))
    try:

        def showing(text: str) -> str:
            def probe() -> str | None:
                screen = tmux.screen()
                return screen if text in screen else None

            found: str = eventually(probe, timeout=30, what=f"{text!r} on the watch screen")
            return found

        first = showing("60.0%")
        helpers.progress(core, namespace, pod, 90)
        second = showing("90.0%")
        row = next(line for line in second.splitlines() if line.startswith("live"))
        assert "Running" in row and "2/2" in row and "90/100" in row
        assert second.count(FULL_CELL) > first.count(FULL_CELL) > 0
        assert second.count("NAME") == 1  # redrawn in place, not appended
        helpers.complete(core, namespace, pod)
        done = showing("0 of 1 job(s) active")
        assert "Completed" in done and "100.0%" in done
        assert eventually(lambda: tmux.exit_status() is not None, what="watch to exit")
        assert tmux.exit_status() == 0
    finally:
        tmux.stop()
