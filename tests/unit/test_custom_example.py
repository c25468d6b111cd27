"""The custom-job example (examples/custom-job, Go) against the contract in docs/custom-jobs.md:
run as a process with the env the operator renders for its worker Pod, pushing to a real
report channel (the operator's ReportServer over TLS; only the TokenReview is played by the
test). Every report it sends must pass the operator's parser; stop and resume must work."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from kubetrain.api.job import TrainingJob
from kubetrain.api.report import (
    CHANNEL_AUDIENCE,
    EXIT_PERMANENT,
    EXIT_STOPPED,
    ProgressReport,
    decode,
    read_permanent,
    tree_digest,
)
from kubetrain.api.status import TrainingJobStatus
from kubetrain.localcluster.pki import report_channel_tls
from kubetrain.localcluster.ports import free_ports
from kubetrain.operator.placement import Placement
from kubetrain.operator.render import worker_pod
from kubetrain.operator.reports import PodIdentity, ReportServer, TokenReviewer, server_context
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import mirror_report
from kubetrain.trainer.checkpoints import CheckpointStore
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom-job"
TOKEN = "the-report-token-of-custom-go-worker-0"
POD = PodIdentity("team", "custom-go-worker-0-a1", "uid-worker-0")


def build_example(out: Path) -> Path:
    """The example's static binary, built by hack/build-custom-example.sh as its image has it."""
    binary = out / "custom-job"
    subprocess.run(
        ["bash", str(ROOT / "hack" / "build-custom-example.sh"), "--binary", str(binary)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return binary


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example(tmp_path_factory.mktemp("custom-job"))


def example_job(**spec: Any) -> TrainingJob:
    """examples/custom-job/trainingjob.yaml, smaller and faster, with ``spec`` laid over it."""
    manifest = yaml.safe_load((EXAMPLE / "trainingjob.yaml").read_text())
    manifest["metadata"] |= {"namespace": "team", "uid": "job-uid", "generation": 1}
    manifest["spec"]["dataset"] = {"synthetic": {"samples": 64}}  # 8 steps an epoch
    manifest["spec"]["training"] |= {"epochs": 3, "batchSize": 8}  # 24 steps
    manifest["spec"]["checkpoint"] |= {"intervalSteps": 5, "keepLast": 3}
    manifest["spec"]["env"] = [{"name": "CUSTOM_STEP_DELAY_MS", "value": "10"}]
    manifest["spec"] |= spec
    return TrainingJob.model_validate(manifest)


@dataclass
class Channel:
    """A real report channel; the reports it was sent, in order."""

    url: str
    ca: str
    reports: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, pod: PodIdentity, text: str) -> int:
        assert pod == POD, "the channel keeps a report for the token's Pod"
        with self.lock:
            self.reports.append(text)
        return 202

    def decoded(self) -> list[ProgressReport]:
        """Every report, through the operator's own parser (it raises on a bad one)."""
        with self.lock:
            return [decode(text) for text in self.reports]


class Authn:
    """The API server's TokenReview: the report token is worker 0's, for the channel."""

    def create_token_review(self, body: Any) -> Any:
        if body.spec.token != TOKEN or body.spec.audiences != [CHANNEL_AUDIENCE]:
            return SimpleNamespace(status=SimpleNamespace(authenticated=False, user=None))
        extra = {"authentication.kubernetes.io/pod-name": [POD.name],
                 "authentication.kubernetes.io/pod-uid": [POD.uid]}  # fmt: skip
        user = SimpleNamespace(username="system:serviceaccount:team:kubetrain-trainer", extra=extra)
        return SimpleNamespace(
            status=SimpleNamespace(authenticated=True, audiences=[CHANNEL_AUDIENCE], user=user)
        )


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Channel]:
    tls = report_channel_tls(tmp_path / "channel-tls")
    port = free_ports(1)[0]
    found = Channel(f"https://127.0.0.1:{port}", (tls / "ca.crt").read_text())
    reviewer = TokenReviewer(Authn())  # type: ignore[arg-type]
    server = ReportServer(
        f"127.0.0.1:{port}", server_context(tls), reviewer, found.accept, lambda: True
    )
    server.start()
    yield found
    server.stop()


@dataclass
class Volume:
    """The checkpoint volume and the Pod's files, in a test directory."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def termination_message(self) -> str:
        return (self.root / "termination-log").read_text()


def pod_env(
    job: TrainingJob, channel: Channel, volume: Volume, resume_from: str = "latest"
) -> dict[str, str]:
    """The env the operator renders for worker 0, with the Pod's paths moved under ``volume``."""
    settings = Settings(
        report_channel_url=channel.url,
        report_channel_ca=channel.ca,
        report_channel_interval_seconds=0.2,
        report_interval_seconds=1,
    )
    gpu_type = job.spec.resources.gpu_type or "cpu"
    entry = settings.catalogue.get(gpu_type)
    assert entry is not None
    pod = worker_pod(
        job, 0, attempt=1, resume_from=resume_from,
        placement=Placement.resolve(job.spec, gpu_type, entry), settings=settings,
    )  # fmt: skip
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/custom-job"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    token = volume.root / "report-token"
    token.write_text(TOKEN + "\n")
    return env | {
        "KUBETRAIN_CHECKPOINT_DIR": str(volume.checkpoints),
        "KUBETRAIN_OUTPUT_DIR": str(volume.checkpoints / "output"),
        "KUBETRAIN_REPORT_TOKEN_FILE": str(token),
        "KUBETRAIN_TERMINATION_LOG": str(volume.root / "termination-log"),
    }


def run(binary: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    found = Volume(tmp_path / "pod")
    found.checkpoints.mkdir(parents=True)
    return found


def test_the_example_job_is_a_valid_custom_training_job() -> None:
    job = TrainingJob.model_validate(yaml.safe_load((EXAMPLE / "trainingjob.yaml").read_text()))
    assert job.spec.model_type == "custom" and job.spec.image and job.spec.command


def test_a_run_reports_on_the_channel_what_status_shows_and_completes(
    binary: Path, channel: Channel, volume: Volume
) -> None:
    done = run(binary, pod_env(example_job(), channel, volume))
    assert done.returncode == 0, done.stderr
    reports = channel.decoded()
    assert reports[-1].state == "completed"  # (a "starting" report may be overtaken by a newer)
    assert len(reports) > 3, "progress is pushed while it trains, not only at the end"
    losses = [r.loss for r in reports if r.loss is not None]
    assert losses[-1] < losses[0] / 4, "the loss falls"
    last = reports[-1]
    assert (last.step, last.total_steps, last.epoch, last.total_epochs) == (24, 24, 3, 3)
    # The checkpoints it lists are those on the volume, in the built-in trainers' layout:
    # every intervalSteps (5) and epoch end (8), the last keepLast (3) kept.
    on_volume = CheckpointStore(volume.checkpoints, keep_last=3).complete()
    assert [c.id for c in last.checkpoints] == [c.id for c in on_volume]
    assert [c.id for c in on_volume] == ["ckpt-00000016", "ckpt-00000020", "ckpt-00000024"]
    # The model is on the volume, sealed, with the digest the SDK checks downloads with.
    output = volume.checkpoints / "output"
    assert last.model is not None and last.model.path == str(output)
    assert last.model.digest == tree_digest(output)[0]
    assert json.loads((output / "model.json").read_text()).keys() == {"a", "b"}
    assert volume.termination_message.startswith("fitted y = ")
    status = mirror_report(TrainingJobStatus(), last, "custom-go-checkpoints")
    assert status.progress is not None and status.progress.percentage == 100.0
    assert status.latest_checkpoint == "ckpt-00000024"
    assert status.metrics is not None and status.metrics.best_loss == min(losses)


def test_sigterm_checkpoints_and_exits_143_and_resume_from_continues_there(
    binary: Path, channel: Channel, volume: Volume, tmp_path: Path
) -> None:
    job = example_job(env=[{"name": "CUSTOM_PAUSE_AT_STEP", "value": "13"}])
    process = subprocess.Popen(
        [str(binary)], env=pod_env(job, channel, volume), stderr=subprocess.PIPE, text=True
    )
    try:
        eventually(lambda: any(r.step == 13 for r in channel.decoded()), timeout=60, what="step 13")
        process.send_signal(signal.SIGTERM)  # what the kubelet does when the operator stops it
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == EXIT_STOPPED, stderr
    stopping = channel.decoded()[-1]
    assert stopping.state == "stopping" and stopping.step == 13
    assert stopping.checkpoints[-1].id == "ckpt-00000013"
    assert "ckpt-00000013" in volume.termination_message
    latest = CheckpointStore(volume.checkpoints, keep_last=3).latest()
    assert latest is not None and (latest.id, latest.step) == ("ckpt-00000013", 13)

    # The operator's next attempt names the checkpoint in RESUME_FROM (spec.resumeFrom).
    channel.reports.clear()
    done = run(binary, pod_env(example_job(), channel, volume, resume_from="ckpt-00000013"))
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint ckpt-00000013 (step 13)" in done.stderr
    resumed = channel.decoded()
    assert min(r.step for r in resumed) >= 13 and resumed[-1].step == 24

    # It continued exactly where it stopped: the same model as a run never stopped.
    straight = Volume(tmp_path / "straight")
    straight.checkpoints.mkdir(parents=True)
    assert run(binary, pod_env(example_job(), channel, straight)).returncode == 0
    model = "output/model.json"
    assert (volume.checkpoints / model).read_text() == (straight.checkpoints / model).read_text()


def test_an_unknown_resume_point_is_a_permanent_failure(
    binary: Path, channel: Channel, volume: Volume
) -> None:
    done = run(binary, pod_env(example_job(), channel, volume, resume_from="ckpt-00000999"))
    assert done.returncode == EXIT_PERMANENT, done.stderr
    reason, message = read_permanent(volume.termination_message)
    assert reason == "ConfigurationError" and "ckpt-00000999" in message
    last = channel.decoded()[-1]
    assert last.state == "failed" and "ckpt-00000999" in last.message


def test_without_the_channel_or_a_pod_it_still_trains_and_logs_its_reports(
    binary: Path, channel: Channel, volume: Volume
) -> None:
    env = pod_env(example_job(), channel, volume)
    env["KUBETRAIN_REPORT_TOKEN_FILE"] = str(volume.root / "no-such-token")
    done = run(binary, env)
    assert done.returncode == 0, done.stderr
    assert not channel.reports and "report not delivered" in done.stderr
