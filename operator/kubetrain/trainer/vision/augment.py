"""Training-time augmentation on decoded images, applied to boxes and masks alike.

Every function takes an ``Example`` at the input size and returns a new one; randomness
comes only from the generator passed in, which the dataset seeds per (seed, epoch, image),
so a resumed run sees exactly the images an uninterrupted one would. HSV jitter, flips
and the affine (rotation, scale, shift) apply to every task; mixup to classifiers (mixed
labels) and detectors (both images' objects); copy-paste to detectors (pasting masks, or
box regions when there are no masks); mosaic to detectors and segmenters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kubetrain.api import Augmentation, VisionTask
from kubetrain.trainer.vision.sources import IGNORE_INDEX

FILL = (114, 114, 114)
MIN_SIDE = 2.0
"""Boxes narrower or lower than this many pixels after a transform are dropped."""
MIN_VISIBLE = 0.2
"""Boxes that keep less than this share of their area inside the image are dropped."""
COVERED = 0.7
"""Boxes that pasted objects cover more than this share of are dropped (copy-paste)."""

Pixels = NDArray[np.uint8]


@dataclass(frozen=True)
class Example:
    """One decoded image and its targets, all in the image's pixel coordinates."""

    image: Pixels
    """H x W x 3 RGB."""
    boxes: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0,), np.int64))
    masks: NDArray[np.bool_] | None = None
    """Instance segmentation: N x H x W, one per box."""
    semantic: Pixels | None = None
    """Semantic segmentation: H x W class indices (``IGNORE_INDEX`` unscored)."""
    label: int | None = None
    soft: NDArray[np.float32] | None = None
    """Classification after mixup: class probabilities (else one-hot of ``label``)."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


def boxes_from_masks(masks: NDArray[np.bool_]) -> NDArray[np.float32]:
    """The tight box of each mask (x1, y1 exclusive); empty masks give a zero box."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size:
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def keep(ex: Example, selected: NDArray[np.bool_]) -> Example:
    masks = ex.masks[selected] if ex.masks is not None else None
    return replace(ex, boxes=ex.boxes[selected], labels=ex.labels[selected], masks=masks)


def sane(ex: Example) -> Example:
    """Drop objects too small to learn from (and, with masks, those left without pixels)."""
    w, h = ex.boxes[:, 2] - ex.boxes[:, 0], ex.boxes[:, 3] - ex.boxes[:, 1]
    selected = (w >= MIN_SIDE) & (h >= MIN_SIDE)
    if ex.masks is not None:
        selected &= ex.masks.reshape(len(ex.masks), -1).any(axis=1)
    return ex if selected.all() else keep(ex, selected)


def resize(ex: Example, size: tuple[int, int]) -> Example:
    """Stretch to ``size`` (width, height): bilinear pixels, nearest masks, scaled boxes (the
    masks' own boxes when there are masks)."""
    if ex.size == size:
        return ex
    (w0, h0), (w, h) = ex.size, size
    image = np.asarray(Image.fromarray(ex.image).resize(size, Image.Resampling.BILINEAR))
    boxes = ex.boxes * np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
    masks = ex.masks
    if masks is not None:
        masks = (
            np.stack([_nearest(m.astype(np.uint8), size) > 0 for m in masks])
            if len(masks)
            else np.zeros((0, h, w), bool)
        )
    semantic = _nearest(ex.semantic, size) if ex.semantic is not None else None
    if masks is not None:
        boxes = boxes_from_masks(masks)
    return replace(ex, image=image, boxes=boxes, masks=masks, semantic=semantic)


def _nearest(plane: Pixels, size: tuple[int, int]) -> Pixels:
    return np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.NEAREST))


# -- photometric ------------------------------------------------------------------------------


def hsv(ex: Example, rng: np.random.Generator, h: float, s: float, v: float) -> Example:
    """Random hue shift and saturation / value gains of up to the given fractions."""
    gain = 1 + rng.uniform(-1, 1, 3) * np.array([h, s, v])
    planes = np.asarray(Image.fromarray(ex.image).convert("HSV"))
    ramp = np.arange(256, dtype=np.float64)
    hue = ((ramp + (gain[0] - 1) * 256) % 256).astype(np.uint8)
    sat = np.clip(ramp * gain[1], 0, 255).astype(np.uint8)
    val = np.clip(ramp * gain[2], 0, 255).astype(np.uint8)
    shifted = np.stack([hue[planes[..., 0]], sat[planes[..., 1]], val[planes[..., 2]]], -1)
    image = np.asarray(Image.fromarray(shifted, "HSV").convert("RGB"))
    return replace(ex, image=image)


# -- geometric --------------------------------------------------------------------------------


def flip(ex: Example, *, horizontal: bool) -> Example:
    """Mirror left-right (or up-down) with its boxes and masks."""
    axis = 1 if horizontal else 0
    w, h = ex.size
    boxes = ex.boxes.copy()
    if horizontal:
        boxes[:, [0, 2]] = w - ex.boxes[:, [2, 0]]
    else:
        boxes[:, [1, 3]] = h - ex.boxes[:, [3, 1]]
    return replace(
        ex,
        image=np.ascontiguousarray(np.flip(ex.image, axis)),
        boxes=boxes,
        masks=np.ascontiguousarray(np.flip(ex.masks, axis + 1)) if ex.masks is not None else None,
        semantic=np.ascontiguousarray(np.flip(ex.semantic, axis))
        if ex.semantic is not None
        else None,
    )


def affine(
    ex: Example, rng: np.random.Generator, degrees: float, translate: float, scale: float
) -> Example:
    """A random rotation, scale and shift about the centre; boxes follow (exactly, from the
    masks, when there are masks), objects pushed mostly out of the image are dropped."""
    w, h = ex.size
    angle = math.radians(rng.uniform(-degrees, degrees))
    factor = rng.uniform(1 - scale, 1 + scale)
    shift = rng.uniform(-translate, translate, 2) * (w, h)
    cos, sin = math.cos(angle) * factor, math.sin(angle) * factor
    cx, cy = w / 2, h / 2
    forward = np.array(
        [
            [cos, -sin, cx - cos * cx + sin * cy + shift[0]],
            [sin, cos, cy - sin * cx - cos * cy + shift[1]],
            [0, 0, 1],
        ]
    )
    inverse = tuple(float(x) for x in np.linalg.inv(forward)[:2].ravel())

    def warp(plane: Pixels, resample: Image.Resampling, fill: int | tuple[int, ...]) -> Pixels:
        img = Image.fromarray(plane)
        return np.asarray(
            img.transform((w, h), Image.Transform.AFFINE, inverse, resample, fillcolor=fill)
        )

    image = warp(ex.image, Image.Resampling.BILINEAR, FILL)
    semantic = (
        warp(ex.semantic, Image.Resampling.NEAREST, IGNORE_INDEX)
        if ex.semantic is not None
        else None
    )
    if ex.masks is not None:
        masks = (
            np.stack([warp(m.astype(np.uint8), Image.Resampling.NEAREST, 0) > 0 for m in ex.masks])
            if len(ex.masks)
            else ex.masks
        )
        out = replace(
            ex, image=image, semantic=semantic, masks=masks, boxes=boxes_from_masks(masks)
        )
        return sane(out)
    corners = ex.boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
    moved = corners @ forward[:2, :2].T + forward[:2, 2]
    loose = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1).astype(np.float32)
    boxes = np.clip(loose, 0, [w, h, w, h]).astype(np.float32)
    visible = _area(boxes) >= MIN_VISIBLE * np.maximum(_area(loose), 1e-6)
    out = replace(ex, image=image, semantic=semantic, boxes=boxes)
    return sane(keep(out, visible))


def _area(boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    area: NDArray[np.float32] = widths * heights
    return area


# -- mixing -----------------------------------------------------------------------------------


def one_hot(ex: Example, num_classes: int) -> NDArray[np.float32]:
    if ex.soft is not None:
        return ex.soft
    target = np.zeros(num_classes, np.float32)
    if ex.label is not None:
        target[ex.label] = 1.0
    return target


def mixup(ex: Example, other: Example, lam: float, num_classes: int) -> Example:
    """Blend two images; a classifier learns the blended labels, a detector both objects."""
    image = (lam * ex.image.astype(np.float32) + (1 - lam) * other.image).round().astype(np.uint8)
    if ex.label is not None or ex.soft is not None:
        soft = lam * one_hot(ex, num_classes) + (1 - lam) * one_hot(other, num_classes)
        return replace(ex, image=image, soft=soft.astype(np.float32))
    masks = (
        np.concatenate([ex.masks, other.masks])
        if ex.masks is not None and other.masks is not None
        else None
    )
    return replace(
        ex,
        image=image,
        boxes=np.concatenate([ex.boxes, other.boxes]),
        labels=np.concatenate([ex.labels, other.labels]),
        masks=masks,
    )


def copy_paste(ex: Example, other: Example, rng: np.random.Generator) -> Example:
    """Paste some of ``other``'s objects (their masks, or their boxes for plain detection)
    onto ``ex``; what they hide of ``ex``'s objects is taken from those objects."""
    if not len(other.labels):
        return ex
    chosen = rng.permutation(len(other.labels))[: int(rng.integers(1, len(other.labels) + 1))]
    w, h = ex.size
    if ex.masks is not None and other.masks is not None:
        pasted = other.masks[chosen]
        cover: NDArray[np.bool_] = np.any(pasted, axis=0)
        masks = ex.masks & ~cover
        image = np.where(cover[..., None], other.image, ex.image)
        base = replace(ex, image=image, masks=masks, boxes=boxes_from_masks(masks))
        base = sane(base)
        assert base.masks is not None
        return replace(
            base,
            boxes=np.concatenate([base.boxes, boxes_from_masks(pasted)]),
            labels=np.concatenate([base.labels, other.labels[chosen]]),
            masks=np.concatenate([base.masks, pasted]),
        )
    image = ex.image.copy()
    cover = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in other.boxes[chosen].round().astype(int):
        image[y0:y1, x0:x1] = other.image[y0:y1, x0:x1]
        cover[y0:y1, x0:x1] = True
    hidden = np.array([_covered(cover, box) for box in ex.boxes], dtype=bool)
    base = keep(replace(ex, image=image), ~hidden) if hidden.size else replace(ex, image=image)
    return replace(
        base,
        boxes=np.concatenate([base.boxes, other.boxes[chosen]]),
        labels=np.concatenate([base.labels, other.labels[chosen]]),
    )


def _covered(cover: NDArray[np.bool_], box: NDArray[np.float32]) -> bool:
    x0, y0, x1, y1 = box.round().astype(int)
    region = cover[y0:y1, x0:x1]
    return bool(region.size) and float(region.mean()) > COVERED


def mosaic(examples: list[Example]) -> Example:
    """Four examples shrunk into the quarters of one image of the first one's size."""
    w, h = examples[0].size
    w1, h1 = w // 2, h // 2
    places = [(0, 0, w1, h1), (w1, 0, w - w1, h1), (0, h1, w1, h - h1), (w1, h1, w - w1, h - h1)]
    image = np.zeros((h, w, 3), np.uint8)
    semantic = np.full((h, w), IGNORE_INDEX, np.uint8) if examples[0].semantic is not None else None
    with_masks = examples[0].masks is not None
    boxes, labels, masks = [], [], []
    for ex, (x, y, pw, ph) in zip(examples, places, strict=True):
        part = resize(ex, (pw, ph))
        image[y : y + ph, x : x + pw] = part.image
        if semantic is not None and part.semantic is not None:
            semantic[y : y + ph, x : x + pw] = part.semantic
        boxes.append(part.boxes + np.array([x, y, x, y], np.float32))
        labels.append(part.labels)
        if with_masks and part.masks is not None:
            full = np.zeros((len(part.masks), h, w), bool)
            full[:, y : y + ph, x : x + pw] = part.masks
            masks.append(full)
    out = Example(
        image=image,
        boxes=np.concatenate(boxes).astype(np.float32),
        labels=np.concatenate(labels),
        masks=np.concatenate(masks) if with_masks else None,
        semantic=semantic,
    )
    return sane(out)


# -- the pipeline -----------------------------------------------------------------------------

APPLIES = {
    "mixup": (VisionTask.CLASSIFICATION, VisionTask.DETECTION, VisionTask.INSTANCE_SEGMENTATION),
    "copy_paste": (VisionTask.DETECTION, VisionTask.INSTANCE_SEGMENTATION),
    "mosaic": (
        VisionTask.DETECTION,
        VisionTask.INSTANCE_SEGMENTATION,
        VisionTask.SEMANTIC_SEGMENTATION,
    ),
}
"""The tasks each mixing augmentation applies to; the others apply to every task."""


def unused_augmentation(aug: Augmentation, task: VisionTask) -> list[str]:
    """The spec's augmentations (camelCase names) that ``task`` ignores."""
    return [
        Augmentation.model_fields[name].alias or name
        for name, tasks in APPLIES.items()
        if getattr(aug, name) and task not in tasks
    ]


Partner = Callable[[np.random.Generator], Example]
"""Loads another training example (unaugmented) chosen with the given generator."""


def augment(
    ex: Example,
    rng: np.random.Generator,
    aug: Augmentation,
    *,
    task: VisionTask,
    partner: Partner,
    num_classes: int,
) -> Example:
    """Apply the spec's augmentation, each step with its probability or strength."""
    detector = task in (VisionTask.DETECTION, VisionTask.INSTANCE_SEGMENTATION)
    if aug.mosaic and task in APPLIES["mosaic"] and rng.random() < aug.mosaic:
        ex = mosaic([ex, partner(rng), partner(rng), partner(rng)])
    if aug.copy_paste and task in APPLIES["copy_paste"] and rng.random() < aug.copy_paste:
        ex = copy_paste(ex, partner(rng), rng)
    if aug.mixup and task in APPLIES["mixup"] and rng.random() < aug.mixup:
        lam = float(rng.beta(32.0, 32.0)) if detector else float(rng.beta(0.4, 0.4))
        ex = mixup(ex, partner(rng), max(lam, 1 - lam), num_classes)
    if aug.degrees or aug.translate or aug.scale:
        ex = affine(ex, rng, aug.degrees, aug.translate, aug.scale)
    if aug.horizontal_flip and rng.random() < aug.horizontal_flip:
        ex = flip(ex, horizontal=True)
    if aug.vertical_flip and rng.random() < aug.vertical_flip:
        ex = flip(ex, horizontal=False)
    if aug.hsv_h or aug.hsv_s or aug.hsv_v:
        ex = hsv(ex, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
    return ex
