"""The vision trainer end to end on CPU, one task at a time: it learns, scores, stops on
SIGTERM with a checkpoint, resumes from the right step (exactly, where the model is
deterministic on CPU), and publishes an ONNX model that ONNX Runtime runs like PyTorch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
from PIL import Image

from kubetrain.api import VisionTask
from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, decode
from kubetrain.api.termination import parse_termination
from kubetrain.trainer.vision import catalog, models
from kubetrain.trainer.vision.export import compare_detections
from kubetrain.trainer.vision.loading import Loader
from kubetrain.trainer.vision.sources import Sample
from kubetrain.trainer.vision.tasks import MEAN, STD
from tests.trainer.conftest import TrainerRun, free_port, launcher_pod, trainer_env

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
MODULE = "kubetrain.trainer.vision"


@dataclass(frozen=True)
class Case:
    """One task's tiny job: architecture, size, and what its validation reports."""

    task: VisionTask
    architecture: str
    size: int
    classes: int
    samples: int
    batch: int
    learning_rate: float
    metrics: tuple[str, ...]
    augmentation: dict[str, float]
    exact: bool
    """Compare every step's loss with an uninterrupted run (deterministic models only)."""

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples / self.batch)


CASES = {
    "classification": Case(
        VisionTask.CLASSIFICATION, "resnet18", 32, 4, 48, 8, 0.005, ("accuracy",),
        {"horizontalFlip": 0.5, "mixup": 0.1, "hsvV": 0.1, "scale": 0.1}, exact=True,
    ),
    "detection": Case(
        VisionTask.DETECTION, "fasterrcnn_mobilenet_v3_large_fpn", 128, 2, 16, 4, 0.01,
        ("mAP50", "mAP50_95"), {"horizontalFlip": 0.5, "copyPaste": 0.3, "hsvH": 0.01},
        exact=False,
    ),
    "instanceSegmentation": Case(
        VisionTask.INSTANCE_SEGMENTATION, "maskrcnn_mobilenet_v3_large_fpn", 128, 2, 12, 4,
        0.01, ("mAP50", "mAP50_95", "maskMAP50", "maskMAP50_95"),
        {"horizontalFlip": 0.5, "copyPaste": 0.5}, exact=False,
    ),
    "semanticSegmentation": Case(
        VisionTask.SEMANTIC_SEGMENTATION, "lraspp_mobilenet_v3_large", 64, 3, 16, 4, 0.02,
        ("mIoU", "pixelAccuracy"),
        {"horizontalFlip": 0.5, "degrees": 10, "scale": 0.2, "mosaic": 0.3}, exact=True,
    ),
}  # fmt: skip


def job(case: Case, **dataset: Any) -> dict[str, Any]:
    return {
        "modelType": "vision",
        "dataset": dataset or {"synthetic": {"samples": case.samples}},
        "vision": {
            "task": case.task.value,
            "architecture": case.architecture,
            "pretrained": False,
            "inputSize": {"width": case.size, "height": case.size},
            "numClasses": case.classes,
            "augmentation": case.augmentation,
            "export": {"format": "onnx"},
        },
        "training": {
            "epochs": 2,
            "batchSize": case.batch,
            "learningRate": case.learning_rate,
            "momentum": 0.9,
            "seed": 3,
        },
        "optimization": {"maxGradNorm": 0 if case.exact else 10},
        "checkpoint": {"keepLast": 3},
    }


@pytest.fixture
def start_vision() -> Iterator[Any]:
    """Start ``python -m kubetrain.trainer.vision`` like a Pod would (reports to a file)."""
    started: list[TrainerRun] = []

    def start(
        directory: Path,
        spec: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        dataset: Path | None = None,
    ) -> TrainerRun:
        directory.mkdir(parents=True, exist_ok=True)
        run_env = trainer_env(directory, spec, dataset, env)
        log = directory.parent / f"{directory.name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE], env=run_env, stdout=sink, stderr=subprocess.STDOUT
            )
        run = TrainerRun(directory, process, log)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def records(directory: Path) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """Per-step losses and per-epoch records from the run's log on the volume."""
    steps: dict[int, float] = {}
    epochs: list[dict[str, Any]] = []
    for line in (directory / "train-log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train_loss" in record:
            epochs.append(record)
        elif "loss" in record:
            assert record["step"] not in steps, f"step {record['step']} trained twice"
            steps[int(record["step"])] = float(record["loss"])
    return steps, epochs


@pytest.mark.parametrize("name", list(CASES))
def test_learns_stops_resumes_and_exports(name: str, start_vision: Any, tmp_path: Path) -> None:
    case = CASES[name]
    spec = job(case)
    per_epoch = case.steps_per_epoch
    pause = per_epoch + 1  # in the middle of epoch 2, after epoch 1's checkpoint
    reference = start_vision(tmp_path / "reference", spec) if case.exact else None
    directory = tmp_path / "interrupted"
    run = start_vision(directory, spec, env={"KUBETRAIN_PAUSE_AT_STEP": str(pause)})
    run.wait_for_step(pause)
    run.stop()
    assert run.wait() == EXIT_STOPPED, run.output()
    stop_id = f"ckpt-{pause:08d}"
    assert run.message() == f"stopped at step {pause} after checkpoint {stop_id}; resumable"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == [f"ckpt-{per_epoch:08d}", stop_id]

    resumed = start_vision(directory, spec, env={"RESUME_FROM": "latest"})
    assert resumed.wait() == 0, resumed.output()
    assert f"resuming from checkpoint {stop_id} (step {pause})" in resumed.output()

    steps, epochs = records(directory)
    assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"], epochs
    for epoch in epochs:
        for metric in case.metrics:
            assert 0.0 <= epoch[metric] <= 1.0, (metric, epoch)
        assert math.isfinite(epoch["eval_loss"])

    report = decode(json.dumps(resumed.report()))
    assert report.state == "completed"
    assert (report.epoch, report.total_epochs) == (2, 2)
    assert (report.step, report.total_steps) == (2 * per_epoch, 2 * per_epoch)
    assert report.throughput_unit == "images/s" and report.throughput and report.throughput > 0
    assert set(case.metrics) <= set(report.metrics)
    assert report.model is not None and report.model.format == "onnx+pytorch"
    done = parse_termination(resumed.message())
    assert done is not None and done.message.startswith(
        f"completed {2 * per_epoch} steps (2 epochs)"
    )
    check_published(case, Path(report.model.path))

    if reference is not None:
        assert reference.wait() == 0, reference.output()
        expected, expected_epochs = records(reference.directory)
        assert steps == pytest.approx(expected, rel=1e-5, abs=1e-6)
        for mine, theirs in zip(epochs, expected_epochs, strict=True):
            assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def check_published(case: Case, output: Path) -> None:
    """The weights rebuild the architecture, and ONNX Runtime gives the same outputs."""
    description = json.loads((output / "model.json").read_text())
    assert description["architecture"] == case.architecture
    assert description["onnx"]["maxDifference"] < 1e-3
    arch = catalog.resolve(case.task, case.architecture)
    size = (case.size, case.size)
    model = models.build(arch, case.classes, size)
    model.load_state_dict(torch.load(output / "model.pt", weights_only=True))
    model.eval()
    example = Loader(case.task, size, case.classes, seed=3).load(Sample(synthetic=10_000))
    image = torch.from_numpy(example.image.transpose(2, 0, 1).copy()).float() / 255
    session = onnxruntime.InferenceSession(
        str(output / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert_onnx_matches(model, session, image, detector=arch.detector)


def assert_onnx_matches(model: Any, session: Any, image: torch.Tensor, *, detector: bool) -> None:
    """ONNX Runtime gives PyTorch's outputs on ``image`` (3 x H x W in [0, 1]): the same
    confident detections, or the same logits."""
    with torch.no_grad():
        if detector:
            found = model([image])[0]
            expected = [
                found["boxes"].numpy(),
                (found["labels"] - 1).numpy(),
                found["scores"].numpy(),
            ]
            if "masks" in found:
                expected.append(found["masks"].numpy())
            got = session.run(None, {"image": image.numpy()})
            _, compared, matched = compare_detections(expected, got, 1e-3)
            assert matched >= 0.98 * compared, (matched, compared)
            return
        normalised = (image[None] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
            :, None, None
        ]
        out = model(normalised)
        logits = (out["out"] if isinstance(out, dict) else out).numpy()
    (got,) = session.run(None, {"images": image[None].numpy()})
    np.testing.assert_allclose(got, logits, rtol=1e-3, atol=1e-4)


def test_two_ranks_stop_together_and_resume(start_vision: Any, tmp_path: Path) -> None:
    case = CASES["classification"]
    pod = launcher_pod()
    directory = tmp_path / "launcher"
    run = start_vision(directory, job(case), env=pod | {"KUBETRAIN_PAUSE_AT_STEP": "2"})
    run.wait_for_step(2)
    run.stop()  # the Pod's PID 1 (the launcher) forwards it to both ranks
    assert run.wait() == EXIT_STOPPED, run.output()
    assert "stopped at step 2 after checkpoint ckpt-00000002" in run.message()
    checkpoint = directory / "ckpt-00000002"
    assert {"rng-0.pt", "rng-1.pt", "model.pt", "training.pt"} <= {
        p.name for p in checkpoint.iterdir()
    }

    resumed = start_vision(directory, job(case), env=pod | {"MASTER_PORT": str(free_port())})
    assert resumed.wait() == 0, resumed.output()
    steps, epochs = records(directory)
    per_epoch = math.ceil(case.samples / (2 * case.batch))  # 48 images / (2 ranks x 8)
    assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
    assert [e["epoch"] for e in epochs] == [1, 2]
    report = decode(json.dumps(resumed.report()))
    assert report.state == "completed" and report.total_steps == 2 * per_epoch


def write_dataset(root: Path, layout: str, case: Case, count: int) -> Path:
    """Synthetic images saved in ``layout`` on disk, as a user's volume would hold them."""
    loader = Loader(case.task, (case.size, case.size), case.classes, seed=11)
    annotations: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for i in range(count):
        example = loader.load(Sample(synthetic=i))
        picture = Image.fromarray(example.image)
        if layout == "imagefolder":
            (root / f"digit{example.label}").mkdir(parents=True, exist_ok=True)
            picture.save(root / f"digit{example.label}" / f"{i}.png")
        elif layout == "masks":
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(parents=True, exist_ok=True)
            picture.save(root / "images" / f"{i}.jpg")
            assert example.semantic is not None
            Image.fromarray(example.semantic).save(root / "masks" / f"{i}.png")
        else:
            (root / "images").mkdir(parents=True, exist_ok=True)
            picture.save(root / "images" / f"{i}.jpg")
            images.append({"id": i, "file_name": f"{i}.jpg", "width": case.size,
                           "height": case.size})  # fmt: skip
            for box, label in zip(example.boxes.tolist(), example.labels.tolist(), strict=True):
                x0, y0, x1, y1 = box
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
                )  # fmt: skip
    if layout == "coco":
        categories = [{"id": c + 1, "name": f"shape {c}"} for c in range(case.classes)]
        (root / "instances.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


@pytest.mark.parametrize(
    ("layout", "name"),
    [("imagefolder", "classification"), ("masks", "semanticSegmentation"), ("coco", "detection")],
)
def test_trains_from_files_on_a_volume(
    layout: str, name: str, start_vision: Any, tmp_path: Path
) -> None:
    case = CASES[name]
    data = write_dataset(tmp_path / "data", layout, case, 12)
    spec = job(case, pvc={"claimName": "images"})
    spec["training"]["epochs"] = 1
    run = start_vision(tmp_path / "run", spec, dataset=data)
    assert run.wait() == 0, run.output()
    report = decode(json.dumps(run.report()))
    assert report.model is not None and report.model.format == "onnx+pytorch"
    assert set(case.metrics) <= set(report.metrics)
    description = json.loads((Path(report.model.path) / "model.json").read_text())
    assert len(description["classes"]) == case.classes


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            {"synthetic": {"samples": 3}},
            "dataset synthetic has 3 usable images; at least 5 are required",
        ),
        (None, "dataset {data} has 3 usable images; at least 5 are required"),
    ],
)
def test_too_few_images_fail_fast_with_a_clear_message(
    dataset: dict[str, Any] | None, message: str, start_vision: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for i, label in enumerate(("cat", "cat", "dog")):
        (data / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(data / label / f"{i}.png")
    spec = job(CASES["classification"], **(dataset or {"pvc": {"claimName": "images"}}))
    run = start_vision(tmp_path / "run", spec, dataset=None if dataset else data)
    assert run.wait(60) == EXIT_PERMANENT, run.output()  # fails the job at once
    assert run.message() == "ConfigurationError: " + message.format(data=data)
    assert "Traceback" not in run.output()


def test_an_unknown_architecture_fails_with_the_supported_ones(
    start_vision: Any, tmp_path: Path
) -> None:
    spec = job(CASES["detection"])
    spec["vision"]["architecture"] = "yolov8"
    run = start_vision(tmp_path / "run", spec)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    message = run.message()
    assert message.startswith(
        "ConfigurationError: spec.vision.architecture 'yolov8' is not supported; for task "
    )
    assert "fasterrcnn_mobilenet_v3_large_fpn" in message
    assert "mobilenet_v3_small" not in message  # a classifier
