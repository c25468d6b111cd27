"""Generated datasets for smoke tests and demos: learnable, offline, deterministic from the seed.

Classification uses scikit-learn's bundled handwritten digits, coloured and scaled up.
Detection and segmentation draw coloured shapes (one class per shape and colour) in
distinct cells of a 2 x 2 grid, so the boxes and masks are exact and never overlap.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from kubetrain.api import VisionTask
from kubetrain.trainer.config import ConfigError

PALETTE = (
    ("red", (220, 40, 40)),
    ("green", (40, 180, 60)),
    ("blue", (50, 80, 220)),
    ("yellow", (230, 200, 30)),
    ("magenta", (200, 50, 200)),
    ("cyan", (40, 200, 210)),
    ("orange", (240, 130, 20)),
    ("white", (245, 245, 245)),
)
SHAPES = ("square", "disc", "triangle", "diamond")
MAX_SHAPE_CLASSES = len(PALETTE)
MAX_DIGITS = 10
DEFAULT_CLASSES = {
    VisionTask.CLASSIFICATION: 10,
    VisionTask.DETECTION: 3,
    VisionTask.INSTANCE_SEGMENTATION: 3,
    VisionTask.SEMANTIC_SEGMENTATION: 4,
}

Mask = NDArray[np.bool_]


def class_names(task: VisionTask, num_classes: int | None) -> list[str]:
    """The synthetic dataset's classes for ``task`` (semantic segmentation: 0 is background)."""
    count = num_classes or DEFAULT_CLASSES[task]
    if task is VisionTask.CLASSIFICATION:
        if count > MAX_DIGITS:
            raise ConfigError(
                f"spec.vision.numClasses {count}: synthetic classification data has at most "
                f"{MAX_DIGITS} classes (the digits 0-9)"
            )
        return [f"digit {i}" for i in range(count)]
    shapes = count - 1 if task is VisionTask.SEMANTIC_SEGMENTATION else count
    if not 1 <= shapes <= MAX_SHAPE_CLASSES:
        limit = MAX_SHAPE_CLASSES + (task is VisionTask.SEMANTIC_SEGMENTATION)
        raise ConfigError(
            f"spec.vision.numClasses {count}: synthetic {task.value} data has "
            f"{'2' if task is VisionTask.SEMANTIC_SEGMENTATION else '1'} to {limit} classes"
        )
    names = [shape_name(c) for c in range(shapes)]
    return ["background", *names] if task is VisionTask.SEMANTIC_SEGMENTATION else names


def shape_name(label: int) -> str:
    return f"{PALETTE[label][0]} {SHAPES[label % len(SHAPES)]}"


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0x5EED])


@functools.cache
def _digits() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # noqa: PLC0415

    data = load_digits()
    return np.asarray(data.images, dtype=np.float64) / 16.0, np.asarray(data.target, np.int64)


def digit(
    seed: int, index: int, num_classes: int, size: tuple[int, int]
) -> tuple[NDArray[np.uint8], int]:
    """Synthetic image ``index``: a coloured digit below ``num_classes`` on a noisy background."""
    images, targets = _digits()
    pool = np.flatnonzero(targets < num_classes)
    order = np.random.default_rng([seed, 0xD161]).permutation(pool)
    chosen = int(order[index % len(order)])
    rng = _rng(seed, index)
    width, height = size
    glyph = Image.fromarray((images[chosen] * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    alpha = np.asarray(glyph, dtype=np.float32)[..., None] / 255.0
    ink = rng.uniform(140, 255, size=3)
    paper = rng.uniform(0, 90, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = alpha * ink + (1 - alpha) * paper + noise
    return np.clip(pixels, 0, 255).astype(np.uint8), int(targets[chosen])


def shapes(
    seed: int, index: int, num_shapes: int, size: tuple[int, int]
) -> tuple[NDArray[np.uint8], list[tuple[int, Mask]]]:
    """Synthetic image ``index``: 1-3 shapes, each with its class and exact mask."""
    rng = _rng(seed, index)
    width, height = size
    background = rng.uniform(60, 140, size=3)
    pixels = np.clip(background + rng.normal(0, 10, (height, width, 3)), 0, 255)
    objects: list[tuple[int, Mask]] = []
    cells = rng.permutation(4)[: int(rng.integers(1, 4))]
    for cell in cells:
        label = int(rng.integers(0, num_shapes))
        cw, ch = width / 2, height / 2
        side = rng.uniform(0.45, 0.85) * min(cw, ch)
        x0 = (cell % 2) * cw + rng.uniform(0, cw - side)
        y0 = (cell // 2) * ch + rng.uniform(0, ch - side)
        mask = _draw(SHAPES[label % len(SHAPES)], (x0, y0, x0 + side, y0 + side), size)
        if mask.any():
            colour = np.asarray(PALETTE[label][1], dtype=np.float64) + rng.normal(0, 8, 3)
            pixels[mask] = np.clip(colour, 0, 255)
            objects.append((label, mask))
    return pixels.astype(np.uint8), objects


def _draw(shape: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> Mask:
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "disc":
        draw.ellipse(box, fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=1)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
    return np.asarray(canvas, dtype=bool)
