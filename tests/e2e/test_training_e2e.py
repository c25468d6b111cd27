"""Real training on the local cluster: operator, node agent, LoRA and vision trainers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.report import ANNOTATION
from kubetrain.localcluster.nodeagent import NodeAgent
from tests.integration.operator_fixtures import OperatorProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240.0


def tiny_lora(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "tiny-lora-cpu.yaml").read_text()
    )
    manifest["metadata"] = {"name": name}
    return manifest


class Job:
    def __init__(
        self, api: client.ApiClient, namespace: str, name: str, operator: OperatorProcess
    ) -> None:
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.ns, self.name, self.operator = namespace, name, operator
        self.seen: list[dict[str, Any]] = []

    def create(self, manifest: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)

    def status(self) -> dict[str, Any]:
        job: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, self.name
        )
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
            result: dict[str, Any] = wait_for(probe, f"{self.name}: {what}", TIMEOUT, self.operator)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- {self.name}'s story ---\n{self.story()}") from None
        return result

    def story(self) -> str:
        """The job's last status conditions and its Events: why it is where it is."""
        last = self.seen[-1] if self.seen else {}
        counts = ("phase", "attempt", "failures", "restarts")
        lines = [", ".join(f"{k} {last.get(k)}" for k in counts)]
        lines += [
            f"condition {c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
            for c in last.get("conditions") or []
        ]
        events = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={self.name}"
        ).items
        lines += [f"event {e.type} {e.reason}: {e.message}" for e in events]
        return "\n".join(lines)

    def until_failed(self, reason: str) -> dict[str, Any]:
        """The Failed condition, once the job failed with ``reason``."""

        def probe() -> dict[str, Any] | None:
            status = self.status()
            failed = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Failed"), None
            )
            if status.get("phase") == "Failed" and failed and failed["reason"] == reason:
                return dict(failed, failures=status.get("failures", 0))
            return None

        result: dict[str, Any] = wait_for(
            probe, f"{self.name}: Failed {reason}", TIMEOUT, self.operator
        )
        return result

    def patch(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, self.name, {"spec": spec}
        )


def _step(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("currentStep") or 0)


@pytest.fixture
def job(
    api_client: client.ApiClient,
    e2e_namespace: str,
    e2e_operator: OperatorProcess,
    request: pytest.FixtureRequest,
) -> Job:
    return Job(api_client, e2e_namespace, "tiny", e2e_operator)


def test_a_tiny_lora_job_trains_to_completion(job: Job) -> None:
    job.create(tiny_lora("tiny"))
    running = job.until(lambda s: _step(s) > 0, "progress mirrored from the trainer")
    assert running["phase"] == "Running"
    assert running["metrics"]["currentLoss"] > 0
    # Progress came on the operator's report channel: the trainer wrote nothing to its Pod.
    pod = job.core.read_namespaced_pod("tiny-worker-0-a1", job.ns)
    assert ANNOTATION not in (pod.metadata.annotations or {})
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    progress = done["progress"]
    assert progress["currentStep"] == progress["totalSteps"] and progress["percentage"] == 100.0
    assert done["checkpoints"] and done["latestCheckpoint"] == done["checkpoints"][-1]["id"]
    assert done["model"]["claimName"] == "tiny-checkpoints" and done["model"]["path"]
    assert done["metrics"]["bestLoss"] <= done["metrics"]["currentLoss"]
    assert done["resourceUsage"]["costUSD"] >= 0 and done["attempt"] == 1
    losses = [
        s["metrics"]["currentLoss"] for s in job.seen if (s.get("metrics") or {}).get("currentLoss")
    ]
    assert losses[-1] < losses[0], "the loss goes down"
    # The curve off the volume (`kubectl train plot`) needs exec into a Pod, which only a
    # real kubelet serves: tests/node/test_shipped.py draws it.


def test_suspend_and_resume_continue_from_the_checkpoint(job: Job) -> None:
    job.create(tiny_lora("tiny"))
    job.until(lambda s: _step(s) >= 10 and s.get("latestCheckpoint"), "a checkpoint after step 10")
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    at = _step(stopped)
    latest = next(c for c in stopped["checkpoints"] if c["id"] == stopped["latestCheckpoint"])
    assert latest["step"] == at, "the trainer checkpointed where it stopped"
    assert job.core.list_namespaced_pod(job.ns).items == []
    assert job.core.read_namespaced_persistent_volume_claim("tiny-checkpoints", job.ns)

    job.patch({"suspend": False})
    job.until(lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", "resumed")
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    resumed = [_step(s) for s in job.seen if s.get("attempt") == 2]
    assert min(resumed) >= at, "the resumed run continues from the checkpoint, not from zero"
    assert _step(done) == done["progress"]["totalSteps"]


def test_a_killed_trainer_pod_is_replaced_and_resumes(job: Job) -> None:
    job.create(tiny_lora("tiny"))
    before = job.until(lambda s: _step(s) >= 8 and s.get("latestCheckpoint"), "a checkpoint")
    saved = max(c["step"] for c in before["checkpoints"])
    job.core.delete_namespaced_pod("tiny-worker-0-a1", job.ns, grace_period_seconds=1)
    job.until(lambda s: s.get("attempt") == 2 and s.get("restarts") == 1, "a restart, counted")
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the restart")
    assert done.get("failures", 0) == 0
    assert _step(done) == done["progress"]["totalSteps"]
    log = job.core.read_namespaced_pod_log("tiny-worker-0-a2", job.ns)
    resumed = re.search(r"resuming from checkpoint (\S+) \(step (\d+)\)", log)
    assert resumed, log[-2000:]
    assert int(resumed[2]) >= saved  # the checkpoint that existed when the Pod was killed, or later


def test_a_lost_node_never_blocks_the_job_it_resumes_on_another_node(
    job: Job, node_agent: NodeAgent
) -> None:
    job.create(tiny_lora("tiny"))
    before = job.until(lambda s: _step(s) >= 8 and s.get("latestCheckpoint"), "a checkpoint")
    saved = max(c["step"] for c in before["checkpoints"])
    lost = job.core.read_namespaced_pod("tiny-worker-0-a1", job.ns).spec.node_name
    node_agent.lose_node(lost)  # heartbeats stop, the trainer dies without a checkpoint
    try:
        job.until(
            lambda s: s.get("attempt") == 2 and s.get("restarts") == 1,
            "a new attempt once the node is lost (a restart, not a failure)",
        )
        done = job.until(lambda s: s.get("phase") == "Completed", "Completed on another node")
        assert done.get("failures", 0) == 0
        assert _step(done) == done["progress"]["totalSteps"]
        second = job.core.read_namespaced_pod("tiny-worker-0-a2", job.ns)
        assert second.spec.node_name != lost
        stuck = job.core.read_namespaced_pod("tiny-worker-0-a1", job.ns)
        assert stuck.metadata.deletion_timestamp is not None  # still Terminating: not waited for
        log = job.core.read_namespaced_pod_log("tiny-worker-0-a2", job.ns)
        resumed = re.search(r"resuming from checkpoint (\S+) \(step (\d+)\)", log)
        assert resumed and int(resumed[2]) >= saved, log[-2000:]
    finally:
        node_agent.restore_node(lost)


def test_a_tiny_vision_job_completes_with_an_onnx_model_on_its_volume(
    api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess
) -> None:
    vision = Job(api_client, e2e_namespace, "tiny-vision", e2e_operator)
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "tiny-vision-cpu.yaml").read_text()
    )
    vision.create(manifest)
    done = vision.until(lambda s: s.get("phase") == "Completed", "Completed")
    assert done["progress"]["percentage"] == 100.0
    assert "accuracy" in done["metrics"]["evaluation"]
    assert done["metrics"]["throughputUnit"] == "images/s"
    model = done["model"]
    assert model["claimName"] == "tiny-vision-checkpoints" and "onnx" in model["format"]

    # The PVC is a local directory behind its PV: the ONNX file is really there.
    claim = vision.core.read_namespaced_persistent_volume_claim(model["claimName"], vision.ns)
    volume = vision.core.read_persistent_volume(claim.spec.volume_name)
    root = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    inside = Path(model["path"]).relative_to("/checkpoints")
    exported = (
        list((root / inside).rglob("*.onnx")) if (root / inside).is_dir() else [root / inside]
    )
    assert exported and all(p.stat().st_size > 0 for p in exported)
