"""What differs between the tasks: moving a batch to the device, the loss, and scoring.

Scoring fills a picklable tally per rank (sums, a confusion matrix, or detections with
run-length masks); ``summarize`` merges the ranks' tallies into the epoch's metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kubetrain.api import VisionTask
from kubetrain.trainer.vision.dataset import Batch
from kubetrain.trainer.vision.scores import Confusion, Objects, coco_map, encode
from kubetrain.trainer.vision.sources import IGNORE_INDEX

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.5

Tally = dict[str, Any]
Autocast = Callable[[], AbstractContextManager[Any]]


def no_autocast() -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


class TaskOps:
    """The task-specific steps of training and validation."""

    primary = "evalLoss"
    """The validation metric (higher is better) that picks the best model."""

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        size: tuple[int, int],
        autocast: Autocast = no_autocast,
    ) -> None:
        self.num_classes = num_classes
        self.device = device
        self.size = size
        self.autocast = autocast
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images.to(self.device, non_blocking=True).float().div_(255)
        return (scaled - self.mean) / self.std

    def images(self, batch: Batch) -> int:
        return len(batch[0])

    def to_device(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def tally(self) -> Tally:
        raise NotImplementedError

    def score(self, model: nn.Module, batch: Batch, tally: Tally) -> None:
        raise NotImplementedError

    def summarize(self, tallies: list[Tally]) -> dict[str, float]:
        raise NotImplementedError


class Classification(TaskOps):
    primary = "accuracy"

    def to_device(self, batch: Batch) -> Batch:
        images, soft, labels = batch
        return self.normalise(images), soft.to(self.device), labels.to(self.device)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, soft, _ = batch
        with self.autocast():
            logits = model(images)
        return functional.cross_entropy(logits.float(), soft)

    def tally(self) -> Tally:
        return {"loss": 0.0, "count": 0, "correct": 0, "correct5": 0}

    def score(self, model: nn.Module, batch: Batch, tally: Tally) -> None:
        images, _, labels = batch
        with self.autocast():
            logits = model(images).float()
        tally["loss"] += float(functional.cross_entropy(logits, labels, reduction="sum"))
        tally["count"] += len(labels)
        tally["correct"] += int((logits.argmax(1) == labels).sum())
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        tally["correct5"] += int((top == labels[:, None]).any(1).sum())

    def summarize(self, tallies: list[Tally]) -> dict[str, float]:
        count = max(sum(t["count"] for t in tallies), 1)
        metrics = {
            "evalLoss": sum(t["loss"] for t in tallies) / count,
            "accuracy": sum(t["correct"] for t in tallies) / count,
        }
        if self.num_classes > 5:
            metrics["top5Accuracy"] = sum(t["correct5"] for t in tallies) / count
        return metrics


class SemanticSegmentation(TaskOps):
    primary = "mIoU"

    def to_device(self, batch: Batch) -> Batch:
        images, masks = batch
        return self.normalise(images), masks.to(self.device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, masks = batch
        with self.autocast():
            logits = model(images)["out"]
        return functional.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)

    def tally(self) -> Tally:
        return {"loss": 0.0, "pixels": 0, "confusion": Confusion(self.num_classes)}

    def score(self, model: nn.Module, batch: Batch, tally: Tally) -> None:
        images, masks = batch
        with self.autocast():
            logits = model(images)["out"].float()
        valid = int((masks != IGNORE_INDEX).sum())
        loss = functional.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
        tally["loss"] += float(loss)
        tally["pixels"] += valid
        tally["confusion"].update(logits.argmax(1).cpu().numpy(), masks.cpu().numpy())

    def summarize(self, tallies: list[Tally]) -> dict[str, float]:
        confusion = Confusion(self.num_classes)
        for t in tallies:
            confusion.matrix += t["confusion"].matrix
        pixels = max(sum(t["pixels"] for t in tallies), 1)
        return {
            "evalLoss": sum(t["loss"] for t in tallies) / pixels,
            "mIoU": confusion.mean_iou(),
            "pixelAccuracy": confusion.pixel_accuracy(),
        }


class Detection(TaskOps):
    """Detection and instance segmentation with torchvision's detectors (targets' labels are
    shifted by one: torchvision keeps 0 for the background)."""

    primary = "mAP50_95"

    def __init__(self, *args: Any, masks: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.masks = masks
        if masks:
            self.primary = "maskMAP50_95"

    def to_device(self, batch: Batch) -> Batch:
        images, targets = batch
        moved = [image.to(self.device, non_blocking=True).float().div_(255) for image in images]
        shifted = [
            {k: (v + 1 if k == "labels" else v).to(self.device, non_blocking=True)
             for k, v in t.items()}
            for t in targets
        ]  # fmt: skip
        return moved, shifted

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, targets = batch
        with self.autocast():
            losses = model(images, targets)
        return torch.stack([v.float() for v in losses.values()]).sum()

    def tally(self) -> Tally:
        return {"loss": 0.0, "count": 0, "truths": [], "detections": []}

    def score(self, model: nn.Module, batch: Batch, tally: Tally) -> None:
        images, targets = batch
        with losses_in_eval(model), self.autocast():
            losses = model(images, targets)
        tally["loss"] += float(sum(float(v) for v in losses.values())) * len(images)
        tally["count"] += len(images)
        model.eval()
        with self.autocast():
            outputs = model(images)
        for target, output in zip(targets, outputs, strict=True):
            tally["truths"].append(self._objects(target, None))
            tally["detections"].append(self._objects(output, output["scores"]))

    def _objects(self, found: dict[str, torch.Tensor], scores: torch.Tensor | None) -> Objects:
        rles = None
        if self.masks:
            masks = found["masks"]
            binary = masks[:, 0] > MASK_THRESHOLD if masks.dim() == 4 else masks > 0
            rles = encode(binary.cpu().numpy())
        return Objects(
            boxes=found["boxes"].detach().float().cpu().numpy(),
            labels=(found["labels"] - 1).cpu().numpy().astype(np.int64),
            scores=scores.detach().float().cpu().numpy() if scores is not None else None,
            rles=rles,
        )

    def summarize(self, tallies: list[Tally]) -> dict[str, float]:
        truths = [t for tally in tallies for t in tally["truths"]]
        found = [d for tally in tallies for d in tally["detections"]]
        count = max(sum(t["count"] for t in tallies), 1)
        metrics = {"evalLoss": sum(t["loss"] for t in tallies) / count}
        boxes = coco_map(self.size, truths, found, self.num_classes, "bbox")
        if boxes is not None:
            metrics["mAP50_95"], metrics["mAP50"] = boxes
        if self.masks:
            masks = coco_map(self.size, truths, found, self.num_classes, "segm")
            if masks is not None:
                metrics["maskMAP50_95"], metrics["maskMAP50"] = masks
        return metrics


@contextlib.contextmanager
def losses_in_eval(model: nn.Module) -> Iterator[None]:
    """A detector in training mode (so it returns losses) with its BatchNorm statistics
    frozen: a validation loss that leaves the model as it was."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        model.eval()


def for_task(
    task: VisionTask,
    num_classes: int,
    device: torch.device,
    size: tuple[int, int],
    autocast: Autocast = no_autocast,
) -> TaskOps:
    if task is VisionTask.CLASSIFICATION:
        return Classification(num_classes, device, size, autocast)
    if task is VisionTask.SEMANTIC_SEGMENTATION:
        return SemanticSegmentation(num_classes, device, size, autocast)
    masks = task is VisionTask.INSTANCE_SEGMENTATION
    return Detection(num_classes, device, size, autocast, masks=masks)
