"""Decoding one sample into an ``Example`` at the input size: pixels, boxes, masks.

Images are decoded (JPEGs at reduced scale when much larger than the input), stretched to
the input size, and their boxes and outlines scaled with them; outlines are rasterised at
the input size directly. Synthetic samples are drawn instead of read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kubetrain.api import VisionTask
from kubetrain.trainer.vision import synthetic
from kubetrain.trainer.vision.augment import Example, boxes_from_masks, sane
from kubetrain.trainer.vision.sources import IGNORE_INDEX, DataError, ObjectAnn, Sample

INDEX_MODES = ("L", "P", "1", "I", "I;16")
"""PIL modes of single-channel masks whose pixel values are class indices."""


@dataclass(frozen=True)
class Loader:
    """Loads samples of one task at one input size (width, height)."""

    task: VisionTask
    size: tuple[int, int]
    num_classes: int
    """Classes a label may take (semantic: mask values; detection: object classes)."""
    seed: int = 0

    @property
    def masks(self) -> bool:
        return self.task is VisionTask.INSTANCE_SEGMENTATION

    def load(self, sample: Sample) -> Example:
        if sample.synthetic is not None:
            return self._synthetic(sample.synthetic)
        assert sample.image is not None
        try:
            with Image.open(sample.image) as raw:
                original = raw.size  # what the annotations' pixel coordinates refer to
                raw.draft("RGB", self.size)  # JPEG: decode at a reduced scale when large
                image = raw.convert("RGB")
        except OSError as err:
            raise DataError(f"cannot read image {sample.image}: {err}") from None
        w, h = self.size
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        if self.task is VisionTask.CLASSIFICATION:
            return Example(image=pixels, label=sample.label)
        if self.task is VisionTask.SEMANTIC_SEGMENTATION:
            return Example(image=pixels, semantic=self._semantic(sample))
        scale = (w, h) if sample.normalized else (w / original[0], h / original[1])
        objects = list(sample.objects)
        boxes = np.array(
            [[o.box[0] * scale[0], o.box[1] * scale[1], o.box[2] * scale[0], o.box[3] * scale[1]]
             for o in objects],
            np.float32,
        ).reshape(-1, 4)  # fmt: skip
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        labels = np.array([o.label for o in objects], np.int64)
        masks = None
        if self.masks:
            masks = (
                np.stack([self._mask(o, scale) for o in objects])
                if objects
                else (np.zeros((0, h, w), bool))
            )
            boxes = boxes_from_masks(masks)
        return sane(Example(image=pixels, boxes=boxes, labels=labels, masks=masks))

    def _semantic(self, sample: Sample) -> NDArray[np.uint8]:
        assert sample.mask is not None
        try:
            with Image.open(sample.mask) as raw:
                if raw.mode not in INDEX_MODES:
                    raise DataError(
                        f"mask {sample.mask} is a {raw.mode} image; semantic segmentation "
                        "needs index PNGs (one class value per pixel, 255 for none)"
                    )
                values = np.asarray(raw.resize(self.size, Image.Resampling.NEAREST))
        except OSError as err:
            raise DataError(f"cannot read mask {sample.mask}: {err}") from None
        values = values.astype(np.int64)
        values[(values >= self.num_classes) & (values != IGNORE_INDEX)] = IGNORE_INDEX
        return values.astype(np.uint8)

    def _mask(self, obj: ObjectAnn, scale: tuple[float, float]) -> NDArray[np.bool_]:
        w, h = self.size
        if obj.rle is not None:
            full = _decode_rle(obj.rle)
            return np.asarray(Image.fromarray(full).resize((w, h), Image.Resampling.NEAREST)) > 0
        from pycocotools import mask as coco_mask  # type: ignore[import-untyped]  # noqa: PLC0415

        scaled = [[v * scale[i % 2] for i, v in enumerate(polygon)] for polygon in obj.polygons]
        return _decode_rle(coco_mask.merge(coco_mask.frPyObjects(scaled, h, w))) > 0

    def _synthetic(self, index: int) -> Example:
        if self.task is VisionTask.CLASSIFICATION:
            pixels, label = synthetic.digit(self.seed, index, self.num_classes, self.size)
            return Example(image=pixels, label=label)
        semantic = self.task is VisionTask.SEMANTIC_SEGMENTATION
        shapes = self.num_classes - 1 if semantic else self.num_classes
        pixels, objects = synthetic.shapes(self.seed, index, shapes, self.size)
        if semantic:
            plane = np.zeros(pixels.shape[:2], np.uint8)
            for label, mask in objects:
                plane[mask] = label + 1
            return Example(image=pixels, semantic=plane)
        w, h = self.size
        masks = np.stack([m for _, m in objects]) if objects else np.zeros((0, h, w), bool)
        return Example(
            image=pixels,
            boxes=boxes_from_masks(masks),
            labels=np.array([label for label, _ in objects], np.int64),
            masks=masks if self.masks else None,
        )


def _decode_rle(rle: dict[str, Any]) -> NDArray[np.uint8]:
    """A COCO run-length mask (compressed, or uncompressed with a counts list) as H x W."""
    from pycocotools import mask as coco_mask  # noqa: PLC0415

    if isinstance(rle.get("counts"), list):
        rle = coco_mask.frPyObjects(rle, *rle["size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2's copy=
        decoded: NDArray[np.uint8] = coco_mask.decode(rle).astype(np.uint8)
    return decoded
