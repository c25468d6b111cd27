"""Every managed-training pipeline on the local cluster, named the way its users name it
(``spec.vision.pipeline`` and nothing else about the model): the real operator renders it,
the node agent runs the vision trainer, the job is suspended mid-run, resumed from its
checkpoint and completes with its metric in the status and its ONNX model on the volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetrain.api import VisionPipeline
from tests.e2e.test_training_e2e import Job, _step
from tests.integration.operator_fixtures import OperatorProcess

pytestmark = pytest.mark.timeout(600)

# Per pipeline: the smallest of its models, an input size it takes, and the metric it reports.
TINY = {
    VisionPipeline.CLASSIFICATION: ("resnet18", 32, "accuracy"),
    VisionPipeline.SM_PYTORCH: ("smp_unet_resnet18", 64, "mIoU"),
    VisionPipeline.DETECTRON2: ("maskrcnn_mobilenet_v3_large_fpn", 96, "maskMAP50_95"),
    VisionPipeline.RFDETR_DETECTION: ("rfdetr_nano", 64, "mAP50_95"),
    VisionPipeline.RFDETR_SEGMENTATION: ("rfdetr_seg_nano", 48, "maskMAP50_95"),
    VisionPipeline.YOLOX: ("fcos_cspdarknet_s", 64, "mAP50_95"),
}
SAMPLES, BATCH, EPOCHS = 12, 4, 2
PER_EPOCH = SAMPLES // BATCH
PAUSE_AT = PER_EPOCH + 1  # mid-way through the second epoch


def manifest(name: str, pipeline: VisionPipeline) -> dict[str, Any]:
    architecture, size, _ = TINY[pipeline]
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "modelType": "vision",
            "dataset": {"synthetic": {"samples": SAMPLES}},
            "vision": {
                "pipeline": pipeline.value,
                "architecture": architecture,
                "pretrained": False,
                "inputSize": {"width": size, "height": size},
                "numClasses": 2,
                "export": {"format": "onnx"},
            },
            "training": {"epochs": EPOCHS, "batchSize": BATCH, "seed": 5},
            # The trainer holds at this step until the suspension's SIGTERM arrives, so the
            # stop lands mid-run however fast the tiny model trains.
            "env": [{"name": "KUBETRAIN_PAUSE_AT_STEP", "value": str(PAUSE_AT)}],
            "resources": {"gpuType": "cpu", "cpu": "1", "memory": "4Gi"},
            "checkpoint": {"size": "1Gi", "keepLast": 2},
        },
    }


@pytest.mark.parametrize("pipeline", list(TINY), ids=str)
def test_a_pipeline_job_suspends_resumes_and_publishes_its_onnx_model(
    pipeline: VisionPipeline,
    api_client: client.ApiClient,
    e2e_namespace: str,
    e2e_operator: OperatorProcess,
) -> None:
    name = f"pipe-{pipeline.value.replace('_', '-')}"
    job = Job(api_client, e2e_namespace, name, e2e_operator)
    job.create(manifest(name, pipeline))
    job.until(lambda s: _step(s) >= PAUSE_AT, f"step {PAUSE_AT} reported")
    job.patch({"suspend": True})
    stopped = job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    assert _step(stopped) == PAUSE_AT
    latest = next(c for c in stopped["checkpoints"] if c["id"] == stopped["latestCheckpoint"])
    assert latest["step"] == PAUSE_AT, "the trainer checkpointed where it stopped"

    job.patch({"suspend": False})
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert done["attempt"] == 2
    assert _step(done) == done["progress"]["totalSteps"] == EPOCHS * PER_EPOCH
    log = job.core.read_namespaced_pod_log(f"{name}-worker-0-a2", job.ns)
    assert f"(step {PAUSE_AT})" in log and "resuming from checkpoint" in log, log[-2000:]
    metric = TINY[pipeline][2]
    assert 0.0 <= done["metrics"]["evaluation"][metric] <= 1.0, done["metrics"]

    model = done["model"]
    assert model["claimName"] == f"{name}-checkpoints" and model["format"] == "onnx+pytorch"
    claim = job.core.read_namespaced_persistent_volume_claim(model["claimName"], job.ns)
    volume = job.core.read_persistent_volume(claim.spec.volume_name)
    root = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    published = root / Path(model["path"]).relative_to("/checkpoints")
    assert (published / "model.onnx").stat().st_size > 0
    assert (published / "model.pt").stat().st_size > 0
