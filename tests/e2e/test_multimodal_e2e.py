"""A vision-language job on the local cluster: pictures and questions on a dataset volume, the
real operator and the multimodal trainer run by the node agent; suspended mid-run, resumed
from its checkpoint, completed with its adapter and processor on the checkpoint volume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import directory_claim
from tests.e2e.test_training_e2e import ROOT, Job, _step
from tests.integration.operator_fixtures import OperatorProcess
from tests.trainer.tiny_vlm import write_dataset

PAUSE_AT = 12


@pytest.fixture
def pictures(api_client: client.ApiClient, e2e_namespace: str, tmp_path: Path) -> Iterator[str]:
    """A claim named ``pictures`` bound to a directory holding train.jsonl and images/."""
    root = tmp_path / "pictures"
    write_dataset(root, 48)
    core = client.CoreV1Api(api_client)
    volume = directory_claim(core, e2e_namespace, "pictures", root)
    yield "pictures"
    core.delete_persistent_volume(volume)


def test_a_multimodal_job_suspends_resumes_from_its_checkpoint_and_publishes(
    api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess, pictures: str
) -> None:
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "tiny-multimodal-cpu.yaml").read_text()
    )
    spec = manifest["spec"]
    spec["dataset"] = {"pvc": {"claimName": pictures}, "format": "jsonl"}
    spec["training"].update(epochs=2, batchSize=4)  # 44 pictures to train on: 22 steps
    spec["checkpoint"]["intervalSteps"] = 8
    # The trainer holds at this step until the suspension's SIGTERM arrives, so the stop
    # lands mid-run however fast the tiny model trains.
    spec["env"] = [{"name": "KUBETRAIN_PAUSE_AT_STEP", "value": str(PAUSE_AT)}]
    job = Job(api_client, e2e_namespace, "tiny-multimodal", e2e_operator)
    job.create(manifest)
    job.until(lambda s: _step(s) >= PAUSE_AT, f"step {PAUSE_AT} reported")
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    at = _step(stopped)
    assert at == PAUSE_AT
    latest = next(c for c in stopped["checkpoints"] if c["id"] == stopped["latestCheckpoint"])
    assert latest["step"] == at, "the trainer checkpointed where it stopped"
    assert job.core.list_namespaced_pod(job.ns).items == []

    job.patch({"suspend": False})
    job.until(lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", "resumed")
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    resumed = [_step(s) for s in job.seen if s.get("attempt") == 2]
    assert min(resumed) >= at, "the resumed run continues from the checkpoint, not from zero"
    assert _step(done) == done["progress"]["totalSteps"] == 22
    log = job.core.read_namespaced_pod_log("tiny-multimodal-worker-0-a2", job.ns)
    assert f"resuming from checkpoint ckpt-{at:08d} (step {at})" in log, log[-2000:]

    model = done["model"]
    assert model["claimName"] == "tiny-multimodal-checkpoints" and model["format"] == "peft-lora"
    claim = job.core.read_namespaced_persistent_volume_claim(model["claimName"], job.ns)
    volume = job.core.read_persistent_volume(claim.spec.volume_name)
    root = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    adapter = root / Path(model["path"]).relative_to("/checkpoints") / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "chat_template.jinja"} <= names
    assert {"processor_config.json", "tokenizer.json"} <= names, names
