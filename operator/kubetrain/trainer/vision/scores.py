"""Validation metrics: mean IoU from a confusion matrix, and COCO mAP through pycocotools.

Plain numpy in and floats out, so they are tested without a model. mAP@0.5:0.95 and
mAP@0.5 are COCO's own numbers (its evaluator, its 101-point interpolation), for boxes or
for masks.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from kubetrain.trainer.vision.sources import IGNORE_INDEX


class Confusion:
    """Pixel counts of (true class, predicted class) over a validation pass."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, predicted: NDArray[np.integer[Any]], target: NDArray[np.integer[Any]]) -> None:
        k = self.num_classes
        valid = (target != IGNORE_INDEX) & (target < k)
        pairs = target[valid].astype(np.int64) * k + predicted[valid].astype(np.int64)
        self.matrix += np.bincount(pairs, minlength=k * k).reshape(k, k)

    def iou(self) -> NDArray[np.float64]:
        """Per class IoU; NaN for a class that neither occurs nor is predicted."""
        hits = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / union, np.nan)

    def mean_iou(self) -> float:
        values = self.iou()
        return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total) if total else 0.0


@dataclass(frozen=True)
class Objects:
    """The objects of one image: ground truth (no scores) or detections (with scores)."""

    boxes: NDArray[np.float32]
    """N x 4, x0 y0 x1 y1 in pixels."""
    labels: NDArray[np.int64]
    """0-based class indices."""
    scores: NDArray[np.float32] | None = None
    rles: list[dict[str, Any]] | None = None
    """Instance masks, COCO run-length encoded (``encode``): compact enough to keep for a
    whole validation set."""


def encode(masks: NDArray[np.bool_]) -> list[dict[str, Any]]:
    """COCO run-length encodings of N x H x W masks."""
    from pycocotools import mask as coco_mask  # type: ignore[import-untyped]  # noqa: PLC0415

    return [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


IouType = Literal["bbox", "segm"]


def coco_map(
    size: tuple[int, int],
    truths: list[Objects],
    detections: list[Objects],
    num_classes: int,
    iou_type: IouType = "bbox",
) -> tuple[float, float] | None:
    """(mAP@0.5:0.95, mAP@0.5) of ``detections`` against ``truths`` (images of one ``size``);
    None when there is nothing to score against."""
    from pycocotools.coco import COCO  # type: ignore[import-untyped]  # noqa: PLC0415
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]  # noqa: PLC0415

    if not any(len(t.labels) for t in truths):
        return None
    w, h = size
    dataset: dict[str, Any] = {
        "images": [{"id": i + 1, "width": w, "height": h} for i in range(len(truths))],
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        "annotations": [],
    }
    for image_id, truth in enumerate(truths, 1):
        for j in range(len(truth.labels)):
            ann = _annotation(truth, j, image_id, iou_type)
            dataset["annotations"].append(
                ann | {"id": len(dataset["annotations"]) + 1, "iscrowd": 0}
            )
    results = [
        _annotation(found, j, image_id, iou_type) | {"score": float(found.scores[j])}
        for image_id, found in enumerate(detections, 1)
        if found.scores is not None
        for j in range(len(found.labels))
    ]
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return max(float(stats[0]), 0.0), max(float(stats[1]), 0.0)


def _annotation(objects: Objects, j: int, image_id: int, iou_type: IouType) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(v) for v in objects.boxes[j])
    ann: dict[str, Any] = {"image_id": image_id, "category_id": int(objects.labels[j]) + 1}
    if iou_type == "segm":
        from pycocotools import mask as coco_mask  # noqa: PLC0415

        assert objects.rles is not None
        rle = objects.rles[j]
        ann["segmentation"] = rle
        ann["area"] = float(coco_mask.area(rle))
        if objects.scores is None:
            ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        return ann
    ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
    ann["area"] = (x1 - x0) * (y1 - y0)
    return ann
