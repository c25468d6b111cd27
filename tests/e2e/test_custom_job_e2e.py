"""A ``modelType: custom`` TrainingJob on the local cluster: the real operator, the node agent
running the Go example (examples/custom-job) as the Pod's command. Its progress, loss,
checkpoints and model reach the job's status by the report contract (docs/custom-jobs.md)
alone: on the report channel, on the Pod annotation when the channel is away, and across a
stop and resume."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetrain.api.report import ANNOTATION, decode
from tests.e2e.test_training_e2e import Job
from tests.integration.operator_fixtures import OperatorProcess
from tests.unit.test_custom_example import EXAMPLE, ROOT, build_example


@pytest.fixture(scope="module")
def binary() -> Iterator[Path]:
    """Built outside /tmp: the Pod's own /tmp (an emptyDir) hides the host's."""
    (ROOT / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="custom-job-e2e-", dir=ROOT / "build"))
    yield build_example(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def job(api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess) -> Job:
    return Job(api_client, e2e_namespace, "custom-go", e2e_operator)


def manifest(binary: Path, *env: tuple[str, str]) -> dict[str, Any]:
    """examples/custom-job/trainingjob.yaml with the binary built here as its command:
    48 steps of about 100 ms (16 an epoch), a checkpoint every 10 steps and epoch end."""
    found: dict[str, Any] = yaml.safe_load((EXAMPLE / "trainingjob.yaml").read_text())
    spec = found["spec"]
    spec["command"] = [str(binary)]
    spec["dataset"] = {"synthetic": {"samples": 128}}
    spec["training"] |= {"epochs": 3, "batchSize": 8}
    spec["checkpoint"] |= {"intervalSteps": 10, "keepLast": 3}
    spec["env"] = [{"name": k, "value": v} for k, v in (("CUSTOM_STEP_DELAY_MS", "100"), *env)]
    return found


def _step(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("currentStep") or 0)


def _annotations(job: Job, pod: str) -> dict[str, str]:
    meta = job.core.read_namespaced_pod(pod, job.ns).metadata
    assert meta is not None
    return dict(meta.annotations or {})


def _losses(job: Job) -> list[float]:
    return [
        s["metrics"]["currentLoss"] for s in job.seen if (s.get("metrics") or {}).get("currentLoss")
    ]


def test_a_custom_go_trainer_reports_on_the_channel_and_completes(job: Job, binary: Path) -> None:
    job.create(manifest(binary))
    running = job.until(
        lambda s: _step(s) > 0 and s.get("phase") == "Running",
        "Running, with progress mirrored from the custom trainer",
    )
    assert running["progress"]["totalSteps"] == 48
    annotated = _annotations(job, "custom-go-worker-0-a1").get(ANNOTATION)
    # Progress is pushed on the channel; only a last word is also written to the Pod.
    assert annotated is None or decode(annotated).state == "completed"

    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    progress = done["progress"]
    assert (progress["currentStep"], progress["percentage"]) == (48, 100.0)
    assert progress["currentEpoch"] == progress["totalEpochs"] == 3
    ids = [c["id"] for c in done["checkpoints"]]
    assert ids == ["ckpt-00000032", "ckpt-00000040", "ckpt-00000048"]
    assert done["latestCheckpoint"] == "ckpt-00000048"
    assert done["model"] == {
        "claimName": "custom-go-checkpoints",
        "path": "/checkpoints/output",
        "format": "json",
        "sizeBytes": done["model"]["sizeBytes"],
        "digest": done["model"]["digest"],
    }
    assert done["model"]["digest"].startswith("sha256:")
    losses = _losses(job)
    assert losses[-1] < losses[0], "the loss goes down"
    assert done["metrics"]["bestLoss"] <= done["metrics"]["currentLoss"]
    assert set(done["metrics"]["evaluation"]) == {"a", "b"}
    assert done["attempt"] == 1 and done.get("failures", 0) == 0


def test_without_the_channel_a_custom_trainer_reports_on_its_pod_annotation(
    job: Job, binary: Path
) -> None:
    # spec.env wins over the operator's variables: the channel is made unreachable.
    job.create(manifest(binary, ("KUBETRAIN_REPORT_URL", "https://127.0.0.1:1/v1/reports")))
    job.until(lambda s: _step(s) > 0, "progress mirrored from the Pod's annotation")
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    assert done["progress"]["currentStep"] == 48 and done["latestCheckpoint"] == "ckpt-00000048"
    assert done["model"]["path"] == "/checkpoints/output"
    # Patched by the trainer itself, through the admission policy.
    last = decode(_annotations(job, "custom-go-worker-0-a1")[ANNOTATION])
    assert last.state == "completed" and last.step == 48
    log = job.core.read_namespaced_pod_log("custom-go-worker-0-a1", job.ns)
    assert "report channel unavailable" in log


def test_a_suspended_custom_job_checkpoints_on_sigterm_and_resumes_there(
    job: Job, binary: Path
) -> None:
    job.create(manifest(binary, ("CUSTOM_PAUSE_AT_STEP", "25")))  # waits there for SIGTERM
    job.until(lambda s: _step(s) >= 25, "step 25")
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    assert stopped["latestCheckpoint"] == "ckpt-00000025", "it checkpointed where it stopped"
    assert _step(stopped) == 25
    assert stopped.get("failures", 0) == 0  # exit 143 is a stop, not a failure
    assert job.core.list_namespaced_pod(job.ns).items == []

    job.patch({"suspend": False})
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert done["attempt"] == 2 and _step(done) == 48
    resumed = [_step(s) for s in job.seen if s.get("attempt") == 2 and _step(s)]
    assert min(resumed) >= 25, "the resumed run continues from the checkpoint, not from zero"
    log = job.core.read_namespaced_pod_log("custom-go-worker-0-a2", job.ns)
    assert re.search(r"resuming from checkpoint ckpt-00000025 \(step 25\)", log), log[-2000:]


def test_exit_78_fails_a_custom_job_at_once_with_the_termination_message(
    job: Job, binary: Path
) -> None:
    found = manifest(binary)
    found["spec"]["resumeFrom"] = "ckpt-00000999"  # no such checkpoint on the fresh volume
    job.create(found)
    failed = job.until_failed("ConfigurationError")
    assert "ckpt-00000999" in failed["message"] and "worker 0" in failed["message"]
    assert failed["failures"] == 0, "not retried: no retry cures it"
