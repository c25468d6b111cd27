"""A user's own trainer (Go, in a scratch image built here) on the real node, following
docs/custom-jobs.md: progress on the channel with the kubelet-projected token, checkpoints,
SIGTERM as PID 1 of its image, the termination message through a read-only root."""

from __future__ import annotations

from typing import Any

from kubetrain.api.report import ANNOTATION
from tests.node.conftest import WAITING_GRACE_SECONDS, RealCluster, Release, until
from tests.node.test_shipped import Job, _example, _step


def test_a_custom_go_job_reports_stops_resumes_and_completes(
    real_cluster: RealCluster, shipped: Release, jobs: str
) -> None:
    job = Job(real_cluster, jobs, "custom-go")
    manifest: dict[str, Any] = _example("custom-job/trainingjob.yaml")
    spec = manifest["spec"]
    spec["image"] = real_cluster.images["custom"]["tag"]
    spec["dataset"]["synthetic"]["samples"] = 128
    spec["training"].update(epochs=3, batchSize=8)  # 48 steps
    spec["checkpoint"]["intervalSteps"] = 8
    spec["env"] = [
        {"name": "CUSTOM_STEP_DELAY_MS", "value": "100"},
        {"name": "CUSTOM_PAUSE_AT_STEP", "value": "25"},
    ]
    job.create(manifest)
    running = job.until(lambda s: _step(s) > 0, "progress from the Go trainer")
    assert running["progress"]["totalSteps"] == 48
    assert ANNOTATION not in (job.pod().metadata.annotations or {}), "it reported on the channel"

    job.until(lambda s: _step(s) >= 25, "the trainer to reach step 25 and wait")
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    assert stopped["latestCheckpoint"] == "ckpt-00000025"
    assert stopped.get("failures", 0) == 0

    job.patch({"suspend": False, "env": [{"name": "CUSTOM_STEP_DELAY_MS", "value": "50"}]})
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert _step(done) == 48 and done["progress"]["percentage"] == 100.0
    assert done["latestCheckpoint"] == "ckpt-00000048"
    assert done["model"]["digest"].startswith("sha256:")
    log = job.core.read_namespaced_pod_log(f"{job.name}-worker-0-a2", job.ns)
    assert "resuming from checkpoint ckpt-00000025 (step 25)" in log, log[-2000:]
    terminated = job.pod(2).status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.message.startswith("fitted y = ")


def test_an_image_the_kubelet_cannot_pull_shows_its_words_at_once_and_fails_the_job(
    real_cluster: RealCluster, shipped: Release, jobs: str
) -> None:
    """The registry is the node's own loopback, where nothing listens: containerd's pull is
    refused at once (no packet leaves the node's namespace), as a wrong registry or tag is."""
    job = Job(real_cluster, jobs, "no-pull")
    manifest: dict[str, Any] = _example("custom-job/trainingjob.yaml")
    missing = "127.0.0.1:1/kubetrain/missing:0"
    manifest["spec"]["image"] = missing
    job.create(manifest)

    def waiting(status: dict[str, Any]) -> dict[str, Any] | None:
        found = [c for c in status.get("conditions") or [] if c["type"] == "ContainersWaiting"]
        return found[0] if found and found[0]["status"] == "True" else None

    status = job.until(waiting, "ContainersWaiting with the kubelet's reason")
    said = waiting(status)
    assert said is not None and said["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert missing in said["message"] and "worker 0" in said["message"]
    assert status["phase"] == "Pending"

    def failed() -> dict[str, Any] | None:
        status = job.status()
        found = [c for c in status.get("conditions") or [] if c["type"] == "Failed"]
        return found[0] if status.get("phase") == "Failed" and found else None

    condition = until(
        failed, "Failed after containerWaitingGraceSeconds", 120 + WAITING_GRACE_SECONDS
    )
    assert condition["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert (
        missing in condition["message"] and "containerWaitingGraceSeconds" in condition["message"]
    )
    events = job.core.list_namespaced_event(jobs, field_selector=f"involvedObject.name={job.name}")
    assert any(e.type == "Warning" and missing in (e.message or "") for e in events.items)
