"""The chart as shipped, on the real node: the operator Pod from its image leads and serves
the report channel; trainers run from theirs, push progress on the channel, survive the
operator's loss and an upgrade, stop with a checkpoint and resume from it."""

from __future__ import annotations

import json
import math
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.report import ANNOTATION, tree_digest
from kubetrain.localcluster.realnode import NODE_NAME
from tests.integration.helpers import plugin
from tests.integration.test_cli import Tmux
from tests.node.conftest import RELEASE, ROOT, RealCluster, Release, until

TIMEOUT = 600.0


# Each of these trains real models on the real node for minutes; a loaded machine can take
# twice as long as an idle one. The suite's 600 s guard against a hang is too tight for them.
pytestmark = pytest.mark.timeout(1800)


class Job:
    def __init__(self, cluster: RealCluster, namespace: str, name: str) -> None:
        self.custom = client.CustomObjectsApi(cluster.api)
        self.core = cluster.core
        self.ns, self.name = namespace, name
        self.seen: list[dict[str, Any]] = []

    def create(self, manifest: dict[str, Any]) -> None:
        manifest["metadata"] = {"name": self.name}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)

    def status(self) -> dict[str, Any]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name)
        status: dict[str, Any] = job.get("status") or {}
        self.seen.append(status)
        return status

    def until(self, check: Any, what: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status()
            if status.get("phase") == "Failed":
                raise AssertionError(f"{self.name} failed: {status.get('conditions')}")
            return status if check(status) else None

        try:
            return until(probe, f"{self.name}: {what}", TIMEOUT)
        except AssertionError as err:  # say where the job stood, and what its Pods were
            last = self.seen[-1] if self.seen else {}
            pods = self.core.list_namespaced_pod(
                self.ns, label_selector=f"kubetrain.io/job-name={self.name}"
            ).items
            seen = [(p.metadata.name, p.status.phase, p.metadata.deletion_timestamp) for p in pods]
            raise AssertionError(
                f"{err}; last status: phase {last.get('phase')}, attempt {last.get('attempt')}, "
                f"conditions {last.get('conditions')}; Pods: {seen}"
            ) from None

    def patch(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, self.name, {"spec": spec}
        )

    def pod(self, attempt: int = 1) -> client.V1Pod:
        return self.core.read_namespaced_pod(f"{self.name}-worker-0-a{attempt}", self.ns)


def _step(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("currentStep") or 0)


def _channel_ahead_of_annotation(job: Job, status: dict[str, Any]) -> float:
    """Seconds by which status (fed by the channel) is newer than the trainer's last report
    on its Pod's annotation (its fallback); infinite if it never fell back."""
    raw = (job.pod().metadata.annotations or {}).get(ANNOTATION)
    latest = (status.get("progress") or {}).get("lastUpdateTime")
    if raw is None or latest is None:
        return math.inf if latest else 0.0
    annotated = datetime.fromisoformat(json.loads(raw)["time"].replace("Z", "+00:00"))
    return (datetime.fromisoformat(latest.replace("Z", "+00:00")) - annotated).total_seconds()


def _example(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return manifest


def _on_gpus(manifest: dict[str, Any]) -> dict[str, Any]:
    """Placed by the nvidia.com/gpu resource (the real node advertises it, with no product
    label: no GPU Feature Discovery); the trainer finds no device and uses the CPU."""
    manifest["spec"]["resources"].update(gpuType="a100", workers=1, cpu="1", memory="3Gi")
    return manifest


def test_the_operator_runs_from_its_image_leads_and_serves(
    real_cluster: RealCluster, shipped: Release
) -> None:
    leader = shipped.leader()
    assert leader is not None
    operator = real_cluster.images["operator"]
    assert leader.spec.node_name == NODE_NAME
    assert leader.spec.containers[0].image == f"ghcr.io/kubetrain/operator@{operator['digest']}"
    assert leader.status.container_statuses[0].image_id.endswith(operator["digest"])
    # The report Service selects the leader's Pod, and only it.
    slices = client.DiscoveryV1Api(real_cluster.api).list_namespaced_endpoint_slice(
        shipped.namespace, label_selector=f"kubernetes.io/service-name={RELEASE}-reports"
    )
    addresses = {a for s in slices.items for e in s.endpoints or [] for a in e.addresses}
    assert addresses == {leader.status.pod_ip}
    print(f"\n[node tier] images loaded into containerd: {real_cluster.loaded}")


def _tiny_lora(samples: int, epochs: int, interval: int) -> dict[str, Any]:
    manifest = _on_gpus(_example("tiny-lora-cpu.yaml"))
    manifest["spec"]["dataset"]["synthetic"]["samples"] = samples
    manifest["spec"]["training"]["epochs"] = epochs
    manifest["spec"]["checkpoint"]["intervalSteps"] = interval
    return manifest


def test_a_lora_job_trains_on_through_the_operators_loss_and_an_upgrade(
    real_cluster: RealCluster, shipped: Release, jobs: str
) -> None:
    job = Job(real_cluster, jobs, "lora-long")
    # Far more steps (36,000) than the test watches: it never ends while the operator is
    # lost and upgraded, however fast this machine trains; it is deleted after.
    job.create(_tiny_lora(samples=16000, epochs=20, interval=1000))
    running = job.until(lambda s: _step(s) > 0, "progress from the trainer")
    pod = job.pod()
    assert pod.spec.node_name == NODE_NAME
    assert "@sha256:" in pod.spec.containers[0].image, "the chart pins the trainer by digest"
    assert ANNOTATION not in (pod.metadata.annotations or {}), "progress came on the channel"

    # The leading operator Pod is deleted mid-run: the standby leads (it serves the channel
    # and holds the Lease, which the old leader released on SIGTERM), the trainer goes on.
    old = shipped.leader()
    assert old is not None
    deleted = time.monotonic()
    real_cluster.core.delete_namespaced_pod(old.metadata.name, shipped.namespace)
    new = until(
        lambda: (lead := shipped.leader()) and lead.metadata.name != old.metadata.name and lead,
        "the standby operator Pod to lead",
    )
    took = time.monotonic() - deleted
    print(f"\n[node tier] leading operator Pod deleted -> the standby leads: {took:.1f}s")
    at = _step(running)
    after = job.until(lambda s: _step(s) > at + 4, "progress under the new leader")
    assert after.get("restarts", 0) == 0 and after.get("failures", 0) == 0
    trainer = job.pod()
    assert trainer.metadata.uid == pod.metadata.uid
    assert trainer.status.container_statuses[0].restart_count == 0

    # A helm upgrade mid-run (a new operator Pod template) changes nothing for the trainer.
    real_cluster.tools.helm(
        "upgrade", RELEASE, str(ROOT / "charts" / "kubetrain"), "--namespace", shipped.namespace,
        "--wait", "--timeout", "5m", *shipped.values,
        "--set", "podAnnotations.kubetrain\\.io/upgraded=yes", "--set", "operator.logLevel=debug",
    )  # fmt: skip
    until(
        lambda: (lead := shipped.leader()) and lead.metadata.name != new.metadata.name and lead,
        "the upgraded operator Pod to lead",
    )
    at = _step(job.status())
    job.until(lambda s: _step(s) > at + 4, "progress after the upgrade")
    # A push that fails while the Service moves (failover, rollout) falls back to the Pod's
    # annotation and tries the channel again 30 s later. The channel's CA is unchanged, so
    # the trainer is back on it: status moves on past the last annotated report.
    job.until(
        lambda s: _channel_ahead_of_annotation(job, s) > 35, "the trainer back on the channel"
    )
    done = job.status()
    assert done.get("restarts", 0) == 0 and done.get("failures", 0) == 0
    assert job.pod().metadata.uid == pod.metadata.uid
    job.custom.delete_namespaced_custom_object(GROUP, VERSION, job.ns, PLURAL, job.name)


def test_a_lora_job_stops_with_a_checkpoint_resumes_from_it_and_completes(
    real_cluster: RealCluster, shipped: Release, jobs: str, tmp_path: Path
) -> None:
    job = Job(real_cluster, jobs, "lora")
    # 1,840 steps: the trainer runs 460 in about 15 s here, and status may show its first
    # checkpoint only seconds later (a leader that just took over): the suspend must still
    # find it training.
    job.create(_tiny_lora(samples=8192, epochs=2, interval=32))
    # Suspend: SIGTERM through the kubelet, a checkpoint where it stopped; resume from it.
    running = job.until(lambda s: _step(s) >= 40 and s.get("latestCheckpoint"), "a checkpoint")
    assert running.get("phase") == "Running", f"the job ended before the suspend: {running}"
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    at = _step(stopped)
    latest = next(c for c in stopped["checkpoints"] if c["id"] == stopped["latestCheckpoint"])
    assert latest["step"] == at, "the trainer checkpointed where it stopped"
    assert stopped.get("failures", 0) == 0
    until(
        lambda: (
            not job.core.list_namespaced_pod(
                job.ns, label_selector=f"kubetrain.io/job-name={job.name}"
            ).items
        ),
        "the stopped job's Pods to be gone (the kubelet finishes their deletion)",
    )
    job.patch({"suspend": False})
    job.until(lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", "resumed")
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert min(_step(s) for s in job.seen if s.get("attempt") == 2) >= at
    assert _step(done) == done["progress"]["totalSteps"]
    assert done.get("failures", 0) == 0  # the resume is attempt 2, never a failure
    log = job.core.read_namespaced_pod_log(f"{job.name}-worker-0-a2", job.ns)
    assert f"step {at})" in log, log[-2000:]

    # The whole curve, across the stop, from the trainer's per-step log on the volume
    # (`kubectl train plot` reads it through a small Pod and the kubelet's exec stream).
    plot = [str(plugin()), "--kubeconfig", str(real_cluster.plane.kubeconfig), "-n", jobs,
            "plot", job.name, "--metric", "loss", "--height", "6"]  # fmt: skip
    plotted = subprocess.run(plot, capture_output=True, text=True, timeout=300, check=False)
    assert plotted.returncode == 0, plotted.stderr
    lines = plotted.stdout.splitlines()
    assert lines[0].startswith(f"{job.name}: loss by step (")
    assert int(lines[0].split("(")[1].split()[0]) > 5
    assert sum(line.count("•") for line in lines[1:7]) > 5
    # And drawn in a real terminal (a tmux pane).
    tmux = Tmux(tmp_path)
    tmux.start(plot)
    try:
        until(lambda: tmux.exit_status() is not None, "plot to finish in tmux")
        screen = tmux.screen()  # the chart's bottom rows and axis (its title may scroll off)
        assert screen.count("•") > 5 and "+---" in screen, screen
        assert tmux.exit_status() == 0
    finally:
        tmux.stop()


def test_a_vision_job_publishes_onnx_and_downloads_through_the_kubelet(
    real_cluster: RealCluster, shipped: Release, jobs: str, tmp_path: Path
) -> None:
    job = Job(real_cluster, jobs, "vision")
    manifest = _on_gpus(_example("tiny-vision-cpu.yaml"))
    manifest["spec"]["training"]["epochs"] = 1
    manifest["spec"]["vision"]["architecture"] = "resnet50"  # a model of about 100 MB
    job.create(manifest)
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    model = done["model"]
    assert "onnx" in model["format"] and model["digest"].startswith("sha256:"), model
    # kubectl train download: a small Pod (the operator's image) on the claim, read through
    # the kubelet's exec stream (logs rotate at 10 MiB there).
    dest = tmp_path / "model"
    downloaded = subprocess.run(
        [str(plugin()), "--kubeconfig", str(real_cluster.plane.kubeconfig), "-n", jobs,
         "download", job.name, str(dest)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    assert tree_digest(dest)[0] == model["digest"]
    assert any(p.suffix == ".onnx" for p in dest.rglob("*"))
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) > 50_000_000
