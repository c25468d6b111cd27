"""Where the images come from: a dataset on a volume, indexed, split and checked; torch-free.

Reading an index only lists files and parses annotation files (no image is decoded), so a
missing, mislaid or too small dataset fails before torch is imported. Coordinates stay as
the dataset gives them (pixels, or fractions for YOLO) until an image is loaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetrain.api import DatasetFormat, VisionTask
from kubetrain.trainer.runtime import TrainerError

MIN_IMAGES = 5
IGNORE_INDEX = 255
"""Mask value that marks pixels without a class (VOC's borders); never trained or scored."""
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class DataError(TrainerError):
    """The dataset is missing, malformed or too small; the message says which and why."""


@dataclass(frozen=True)
class ObjectAnn:
    """One annotated object: a box (x0, y0, x1, y1), its class, and its outline if known."""

    box: tuple[float, float, float, float]
    label: int
    polygons: tuple[tuple[float, ...], ...] = ()
    """Outlines as flat x, y lists (COCO and YOLO segments), in the box's units."""
    rle: dict[str, Any] | None = None
    """A COCO run-length mask, in the image's own pixels."""

    @property
    def has_mask(self) -> bool:
        return bool(self.polygons) or self.rle is not None


@dataclass(frozen=True)
class Sample:
    """One image and its labels: a file on the volume, or a synthetic index."""

    image: Path | None = None
    synthetic: int | None = None
    label: int | None = None
    """Classification: the class index."""
    objects: tuple[ObjectAnn, ...] = ()
    """Detection and instance segmentation: the objects."""
    mask: Path | None = None
    """Semantic segmentation: an index PNG, one class value per pixel."""
    normalized: bool = False
    """Box and outline coordinates are fractions of the image size (YOLO)."""

    def describe(self) -> str:
        return str(self.image) if self.image is not None else f"synthetic #{self.synthetic}"


@dataclass(frozen=True)
class DatasetIndex:
    """The usable samples of a dataset, its class names, and what was left out and why."""

    train: list[Sample]
    val: list[Sample] | None
    """The dataset's own validation split, when its layout has one."""
    classes: list[str]
    source: str
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.train) + len(self.val or [])


FORMATS_BY_TASK = {
    VisionTask.CLASSIFICATION: (DatasetFormat.IMAGEFOLDER,),
    VisionTask.DETECTION: (DatasetFormat.COCO, DatasetFormat.YOLO, DatasetFormat.VOC),
    VisionTask.INSTANCE_SEGMENTATION: (DatasetFormat.COCO, DatasetFormat.YOLO),
    VisionTask.SEMANTIC_SEGMENTATION: (DatasetFormat.IMAGEFOLDER, DatasetFormat.VOC),
}
"""Layouts each task reads; imagefolder for semantic segmentation means image + mask pairs."""


def infer_format(path: Path, task: VisionTask) -> DatasetFormat:
    """The layout of ``path`` when spec.dataset.format is unset, from its tell-tale files."""
    if path.is_file():
        if path.suffix == ".json":
            return DatasetFormat.COCO
        if path.suffix in (".yaml", ".yml"):
            return DatasetFormat.YOLO
        raise DataError(
            f"dataset {path} is a file; give a directory, a COCO .json or a YOLO data.yaml"
        )
    if task is VisionTask.CLASSIFICATION:
        return DatasetFormat.IMAGEFOLDER
    if (path / "JPEGImages").is_dir():
        return DatasetFormat.VOC
    if task is VisionTask.SEMANTIC_SEGMENTATION:
        return DatasetFormat.IMAGEFOLDER
    if any(path.glob("*.yaml")) or any(path.glob("*.yml")) or (path / "labels").is_dir():
        return DatasetFormat.YOLO
    if any(path.glob("*.json")) or any(path.glob("annotations/*.json")):
        return DatasetFormat.COCO
    raise DataError(
        f"cannot tell the layout of dataset {path}: set spec.dataset.format "
        f"({', '.join(f.value for f in FORMATS_BY_TASK[task])})"
    )


def read_dataset(
    path: Path, task: VisionTask, fmt: DatasetFormat | None, num_classes: int | None
) -> DatasetIndex:
    """Index the dataset at ``path`` in the layout ``fmt`` (inferred when None) for ``task``."""
    from kubetrain.trainer.vision import readers  # noqa: PLC0415 - keeps this module light

    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    fmt = fmt or infer_format(path, task)
    allowed = FORMATS_BY_TASK[task]
    if fmt not in allowed:
        raise DataError(
            f"spec.dataset.format {fmt.value} cannot train task {task.value}; "
            f"use one of {', '.join(f.value for f in allowed)}"
        )
    if fmt is DatasetFormat.IMAGEFOLDER and task is VisionTask.CLASSIFICATION:
        index = readers.read_imagefolder(path)
    elif fmt is DatasetFormat.IMAGEFOLDER:
        index = readers.read_mask_pairs(path, num_classes)
    elif fmt is DatasetFormat.COCO:
        index = readers.read_coco(path, masks=task is VisionTask.INSTANCE_SEGMENTATION)
    elif fmt is DatasetFormat.YOLO:
        index = readers.read_yolo(path, masks=task is VisionTask.INSTANCE_SEGMENTATION)
    elif task is VisionTask.SEMANTIC_SEGMENTATION:
        index = readers.read_voc_segmentation(path, num_classes)
    else:
        index = readers.read_voc_detection(path)
    if task in (VisionTask.DETECTION, VisionTask.INSTANCE_SEGMENTATION) and not any(
        s.objects for s in index.train
    ):
        raise DataError(f"dataset {index.source} has no annotated objects to train on")
    return index


def require_enough(count: int, source: str, note: str = "", minimum: int = MIN_IMAGES) -> None:
    """Fail with a clear message when fewer than ``minimum`` images can be trained on."""
    if count < minimum:
        extra = f" ({note})" if note else ""
        raise DataError(
            f"dataset {source} has {count} usable images; at least {minimum} are required{extra}"
        )


def skipped_note(index: DatasetIndex) -> str:
    """Why entries were left out, with the first few, for the too-few-images message."""
    if not index.skipped:
        return ""
    return f"{index.skipped} entries were left out, e.g. {'; '.join(index.notes[:3])}"


def split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded train/validation split: at least one image on each side."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    count = min(max(round(len(samples) * fraction), 1), len(samples) - 1)
    held = set(order[:count])
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


def class_count(index: DatasetIndex, requested: int | None) -> int:
    """spec.vision.numClasses when set (it may exceed the data's), else the data's."""
    found = len(index.classes)
    if requested is None:
        return found
    if requested < found:
        raise DataError(
            f"spec.vision.numClasses is {requested} but dataset {index.source} has {found} "
            f"classes ({', '.join(index.classes[:10])}{', ...' if found > 10 else ''})"
        )
    return requested
