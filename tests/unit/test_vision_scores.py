"""Validation metrics: mIoU from a confusion matrix, COCO mAP for boxes and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubetrain.trainer.vision.scores import Confusion, Objects, coco_map, encode


def test_confusion_gives_iou_per_class_and_ignores_unlabelled_pixels() -> None:
    confusion = Confusion(3)
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion.update(predicted, target)
    iou = confusion.iou()
    assert iou.tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert confusion.mean_iou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert confusion.pixel_accuracy() == pytest.approx(5 / 7)


def test_classes_never_seen_nor_predicted_do_not_count() -> None:
    confusion = Confusion(4)
    confusion.update(np.array([0, 1]), np.array([0, 1]))
    assert math.isnan(confusion.iou()[3]) and confusion.mean_iou() == 1.0
    assert Confusion(2).mean_iou() == 0.0


def objects(
    boxes: list[list[float]], labels: list[int], scores: list[float] | None = None
) -> Objects:
    masks = np.zeros((len(boxes), 40, 40), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[int(y0) : int(y1), int(x0) : int(x1)] = True
    return Objects(
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        scores=np.array(scores, np.float32) if scores is not None else None,
        rles=encode(masks),
    )


def test_perfect_detections_score_one_and_misses_lower_it() -> None:
    truths = [objects([[2, 2, 20, 20], [22, 5, 38, 30]], [0, 1]), objects([[5, 5, 15, 35]], [1])]
    perfect = [objects([[2, 2, 20, 20], [22, 5, 38, 30]], [0, 1], [0.9, 0.8]),
               objects([[5, 5, 15, 35]], [1], [0.7])]  # fmt: skip
    assert coco_map((40, 40), truths, perfect, 2) == pytest.approx((1.0, 1.0))
    assert coco_map((40, 40), truths, perfect, 2, "segm") == pytest.approx((1.0, 1.0))
    shifted = [objects([[2, 2, 20, 20], [22, 5, 38, 30]], [0, 0], [0.9, 0.8]),
               objects([[7, 5, 17, 35]], [1], [0.7])]  # fmt: skip
    strict, loose = coco_map((40, 40), truths, shifted, 2) or (0.0, 0.0)
    assert 0 < strict < loose < 1


def test_no_detections_score_zero_and_no_truths_score_nothing() -> None:
    truths = [objects([[2, 2, 20, 20]], [0])]
    assert coco_map((40, 40), truths, [objects([], [], [])], 1) == (0.0, 0.0)
    assert coco_map((40, 40), [objects([], [])], [objects([], [], [])], 1) is None
