"""Every managed-training pipeline (spec.vision.pipeline) end to end on CPU: a tiny model of
its own library learns, reports the metric its users know, stops on SIGTERM with a
checkpoint, resumes exactly where it stopped, and publishes an ONNX model that ONNX Runtime
runs like PyTorch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
from PIL import Image

from kubetrain.api import PIPELINES, VisionPipeline, VisionTask
from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, decode
from kubetrain.trainer.vision import catalog, models
from kubetrain.trainer.vision.libraries import RFDETR, RFDETRExport
from kubetrain.trainer.vision.loading import Loader
from kubetrain.trainer.vision.sources import Sample
from tests.trainer import test_vision_training
from tests.trainer.conftest import free_port, launcher_pod
from tests.trainer.test_vision_training import assert_onnx_matches, records

pytestmark = pytest.mark.timeout(420)

start_vision = test_vision_training.start_vision  # the fixture, shared


@dataclass(frozen=True)
class Case:
    """One pipeline's tiny job."""

    architecture: str
    size: int
    samples: int
    batch: int
    metrics: tuple[str, ...]
    learning_rate: float | None = None
    exact: bool = True
    """Compare every step's loss with an uninterrupted run (deterministic models only)."""

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples / self.batch)


_BOXES = ("mAP50", "mAP50_95")
_MASKS = (*_BOXES, "maskMAP50", "maskMAP50_95")
CASES = {
    VisionPipeline.CLASSIFICATION: Case("resnet18", 32, 24, 8, ("accuracy",), 0.005),
    VisionPipeline.SM_PYTORCH: Case("smp_unet_resnet18", 64, 16, 4, ("mIoU", "pixelAccuracy")),
    VisionPipeline.DETECTRON2: Case(
        "maskrcnn_mobilenet_v3_large_fpn", 128, 12, 4, _MASKS, exact=False
    ),
    VisionPipeline.RFDETR_DETECTION: Case("rfdetr_nano", 64, 12, 4, _BOXES),
    VisionPipeline.RFDETR_SEGMENTATION: Case("rfdetr_seg_nano", 48, 12, 4, _MASKS),
    VisionPipeline.YOLOX: Case("fcos_cspdarknet_s", 64, 12, 4, _BOXES),
}


def job(pipeline: VisionPipeline, case: Case) -> dict[str, Any]:
    training: dict[str, Any] = {"epochs": 2, "batchSize": case.batch, "seed": 3}
    if case.learning_rate is not None:
        training["learningRate"] = case.learning_rate
    return {
        "modelType": "vision",
        "dataset": {"synthetic": {"samples": case.samples}},
        "vision": {
            "pipeline": pipeline.value,
            "architecture": case.architecture,
            "pretrained": False,
            "inputSize": {"width": case.size, "height": case.size},
            "numClasses": 2,
            "export": {"format": "onnx"},
        },
        "training": training,
        "optimization": {"maxGradNorm": 0 if case.exact else 10},
        "checkpoint": {"keepLast": 2},
    }


@pytest.mark.parametrize("pipeline", list(CASES), ids=str)
def test_each_pipeline_learns_stops_resumes_and_exports(
    pipeline: VisionPipeline, start_vision: Any, tmp_path: Path
) -> None:
    case = CASES[pipeline]
    spec = job(pipeline, case)
    per_epoch = case.steps_per_epoch
    pause = per_epoch + 1  # in the middle of epoch 2, after epoch 1's checkpoint
    reference = start_vision(tmp_path / "reference", spec) if case.exact else None
    directory = tmp_path / "interrupted"
    run = start_vision(directory, spec, env={"KUBETRAIN_PAUSE_AT_STEP": str(pause)})
    run.wait_for_step(pause, timeout=300)
    run.stop()
    assert run.wait(300) == EXIT_STOPPED, run.output()
    assert run.message().startswith(f"stopped at step {pause} after checkpoint")

    resumed = start_vision(directory, spec, env={"RESUME_FROM": "latest"})
    assert resumed.wait(300) == 0, resumed.output()
    assert f"(step {pause})" in resumed.output()

    steps, epochs = records(directory)
    assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
    assert [e["epoch"] for e in epochs] == [1, 2]
    for epoch in epochs:
        for metric in case.metrics:
            assert 0.0 <= epoch[metric] <= 1.0, (metric, epoch)
    report = decode(json.dumps(resumed.report()))
    assert report.state == "completed"
    assert set(case.metrics) <= set(report.metrics)
    assert report.model is not None and report.model.format == "onnx+pytorch"
    output = Path(report.model.path)
    description = json.loads((output / "model.json").read_text())
    assert description["architecture"] == case.architecture
    check_onnx(pipeline, case, output)

    if reference is not None:
        assert reference.wait(300) == 0, reference.output()
        expected, expected_epochs = records(reference.directory)
        assert steps == pytest.approx(expected, rel=1e-5, abs=1e-6)
        for mine, theirs in zip(epochs, expected_epochs, strict=True):
            assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def check_onnx(pipeline: VisionPipeline, case: Case, output: Path) -> None:
    """The published weights rebuild the model, and ONNX Runtime agrees with it."""
    task = PIPELINES[pipeline].task
    arch = catalog.resolve(task, case.architecture, pipeline)
    size = (case.size, case.size)
    model = models.build(arch, 2, size)
    model.load_state_dict(torch.load(output / "model.pt", weights_only=True))
    model.eval()
    example = Loader(task, size, 2, seed=3).load(Sample(synthetic=10_000))
    image = torch.from_numpy(example.image.transpose(2, 0, 1).copy()).float() / 255
    session = onnxruntime.InferenceSession(
        str(output / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    with torch.no_grad():
        if isinstance(model, RFDETR):
            expected = RFDETRExport(model)(image[None])
            got = session.run(None, {"images": image[None].numpy()})
            for ours, theirs in zip(expected, got, strict=True):
                np.testing.assert_allclose(theirs, ours.numpy(), rtol=1e-3, atol=1e-3)
            return
    assert_onnx_matches(model, session, image, detector=arch.detector)


@pytest.mark.parametrize("pipeline", list(CASES), ids=str)
def test_each_pipeline_refuses_fewer_than_five_images(
    pipeline: VisionPipeline, start_vision: Any, tmp_path: Path
) -> None:
    spec = job(pipeline, CASES[pipeline])
    spec["dataset"] = {"synthetic": {"samples": 4}}
    run = start_vision(tmp_path / "run", spec)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    assert run.message() == (
        "ConfigurationError: dataset synthetic has 4 usable images; at least 5 are required"
    )


def test_a_pipeline_refuses_another_pipeline_s_model_and_a_bad_input_size(
    start_vision: Any, tmp_path: Path
) -> None:
    spec = job(VisionPipeline.RFDETR_DETECTION, CASES[VisionPipeline.RFDETR_DETECTION])
    spec["vision"]["architecture"] = "fcos_cspdarknet_s"
    run = start_vision(tmp_path / "other", spec)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    assert run.message() == (
        "ConfigurationError: spec.vision.architecture 'fcos_cspdarknet_s' is not a model of "
        "spec.vision.pipeline rfdetr_detection; use one of: rfdetr_nano, rfdetr_small, "
        "rfdetr_medium, rfdetr_large"
    )
    spec = job(VisionPipeline.RFDETR_DETECTION, CASES[VisionPipeline.RFDETR_DETECTION])
    spec["vision"]["inputSize"] = {"width": 100, "height": 64}
    run = start_vision(tmp_path / "size", spec)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    assert run.message() == (
        "ConfigurationError: spec.vision.inputSize 100x64: rfdetr_nano needs a width and "
        "height that are multiples of 32"
    )


def test_rfdetr_trains_on_two_ranks_stops_together_and_resumes(
    start_vision: Any, tmp_path: Path
) -> None:
    """DDP over RF-DETR: its set criterion on each rank's images, one stop, one resume."""
    pipeline = VisionPipeline.RFDETR_DETECTION
    case = CASES[pipeline]
    pod = launcher_pod()
    directory = tmp_path / "launcher"
    spec = job(pipeline, case)
    paused = pod | {"KUBETRAIN_PAUSE_AT_STEP": "1"}
    run = start_vision(directory, spec, env=paused)
    run.wait_for_step(1, timeout=300)
    run.stop()  # the Pod's PID 1 (the launcher) forwards it to both ranks
    assert run.wait(300) == EXIT_STOPPED, run.output()
    assert {"rng-0.pt", "rng-1.pt"} <= {p.name for p in (directory / "ckpt-00000001").iterdir()}

    resumed = start_vision(directory, spec, env=pod | {"MASTER_PORT": str(free_port())})
    assert resumed.wait(300) == 0, resumed.output()
    steps, epochs = records(directory)
    per_epoch = math.ceil(case.samples / (2 * case.batch))  # 12 images / (2 ranks x 4)
    assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
    assert [e["epoch"] for e in epochs] == [1, 2]
    report = decode(json.dumps(resumed.report()))
    assert report.state == "completed" and report.model is not None


def write_files(root: Path, layout: str, task: VisionTask, size: int, count: int) -> Path:
    """Generated pictures saved the way a user's volume holds them: YOLO labels (boxes, or
    outlines for instance segmentation), COCO JSON with polygons, or image + mask pairs."""
    loader = Loader(task, (size, size), 2, seed=11)
    (root / "images").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        example = loader.load(Sample(synthetic=i))
        Image.fromarray(example.image).save(root / "images" / f"{i}.png")
        if layout == "masks":
            (root / "masks").mkdir(exist_ok=True)
            assert example.semantic is not None
            Image.fromarray(example.semantic).save(root / "masks" / f"{i}.png")
            continue
        lines = []
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
        for box, label in zip(example.boxes.tolist(), example.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            outline = [x0, y0, x1, y0, x1, y1, x0, y1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                 "segmentation": [outline], "iscrowd": 0}
            )  # fmt: skip
            if task is VisionTask.INSTANCE_SEGMENTATION:
                lines.append(" ".join([str(label), *(f"{v / size:.5f}" for v in outline)]))
            else:
                cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
                lines.append(f"{label} {cx / size:.5f} {cy / size:.5f} {w / size:.5f} "
                             f"{h / size:.5f}")  # fmt: skip
        if layout == "yolo":
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    if layout == "coco":
        categories = [{"id": c + 1, "name": f"shape {c}"} for c in range(2)]
        (root / "instances.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


@pytest.mark.parametrize(
    ("pipeline", "layout"),
    [
        (VisionPipeline.YOLOX, "yolo"),
        (VisionPipeline.RFDETR_SEGMENTATION, "yolo"),
        (VisionPipeline.RFDETR_DETECTION, "coco"),
        (VisionPipeline.DETECTRON2, "coco"),
        (VisionPipeline.SM_PYTORCH, "masks"),
    ],
    ids=str,
)
def test_pipelines_train_on_the_datasets_users_bring(
    pipeline: VisionPipeline, layout: str, start_vision: Any, tmp_path: Path
) -> None:
    case = CASES[pipeline]
    task = PIPELINES[pipeline].task
    data = write_files(tmp_path / "data", layout, task, case.size, 10)
    spec = job(pipeline, case)
    spec["dataset"] = {"pvc": {"claimName": "images"}, **({} if layout == "masks" else
                                                          {"format": layout})}  # fmt: skip
    spec["training"]["epochs"] = 1
    run = start_vision(tmp_path / "run", spec, dataset=data)
    assert run.wait(300) == 0, run.output()
    report = decode(json.dumps(run.report()))
    assert report.model is not None and report.model.format == "onnx+pytorch"
    assert set(case.metrics) <= set(report.metrics)
    description = json.loads((Path(report.model.path) / "model.json").read_text())
    assert len(description["classes"]) == 2
    if layout == "coco":
        assert description["classes"] == ["shape 0", "shape 1"]  # the file's category names
