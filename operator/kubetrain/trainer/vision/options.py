"""The vision trainer's own knobs and its checks that run before torch is imported.

Everything else comes from the TrainingJob spec; these are environment variables (settable
through ``spec.env``) because they tune this trainer rather than describe the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetrain.api import ModelType, TrainingJobSpec, VisionConfig, VisionTask
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.vision import catalog, synthetic
from kubetrain.trainer.vision.catalog import Architecture
from kubetrain.trainer.vision.sources import (
    DatasetIndex,
    Sample,
    class_count,
    read_dataset,
    require_enough,
    skipped_note,
    split,
)

log = logging.getLogger(__name__)

WEIGHTS_ENV = "KUBETRAIN_PRETRAINED_WEIGHTS"
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class VisionOptions:
    """Trainer-specific settings: validation split, loader workers, weights file, optimiser."""

    validation_fraction: float = 0.2
    data_workers: int | None = None
    """DataLoader worker processes; None: a few on a GPU, none on a CPU."""
    weights: Path | None = None
    optimizer: str = ""
    """sgd or adamw; empty: the architecture's (adamw for RF-DETR, else sgd)."""
    onnx_tolerance: float = 1e-3
    """Largest difference allowed between ONNX Runtime and PyTorch outputs, relative to
    the outputs' scale (and, for detections, absolute on scores and box coordinates / 100)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> VisionOptions:
        fraction = _number(environ, "KUBETRAIN_VALIDATION_FRACTION", 0.2)
        if not 0 < fraction < 1:
            raise ConfigError(f"KUBETRAIN_VALIDATION_FRACTION={fraction} must be in (0, 1)")
        workers = environ.get("KUBETRAIN_DATA_WORKERS", "").strip()
        if workers and (not workers.isdigit()):
            raise ConfigError(f"KUBETRAIN_DATA_WORKERS={workers!r} must be a whole number >= 0")
        optimizer = environ.get("KUBETRAIN_OPTIMIZER", "").strip().lower()
        if optimizer and optimizer not in OPTIMIZERS:
            raise ConfigError(f"KUBETRAIN_OPTIMIZER={optimizer!r} must be one of {OPTIMIZERS}")
        weights = environ.get(WEIGHTS_ENV, "").strip()
        tolerance = _number(environ, "KUBETRAIN_ONNX_TOLERANCE", 1e-3)
        if tolerance <= 0:
            raise ConfigError(f"KUBETRAIN_ONNX_TOLERANCE={tolerance} must be positive")
        return cls(
            validation_fraction=fraction,
            data_workers=int(workers) if workers else None,
            weights=Path(weights) if weights else None,
            optimizer=optimizer,
            onnx_tolerance=tolerance,
        )


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Plan:
    """What preflight settled: the model, the input size, the classes and the split data."""

    arch: Architecture
    size: tuple[int, int]
    """(width, height) every image is resized to."""
    classes: list[str]
    num_classes: int
    train: list[Sample]
    val: list[Sample]
    source: str
    weights: Path | None = None

    @property
    def task(self) -> VisionTask:
        return self.arch.task


def preflight(env: RuntimeEnv, spec: TrainingJobSpec, options: VisionOptions) -> Plan:
    """Check what can be checked without torch; returns the run's plan."""
    if spec.model_type is not ModelType.VISION or spec.vision is None:
        raise ConfigError(
            f"spec.modelType is {spec.model_type.value}: the vision trainer trains modelType vision"
        )
    vision = spec.vision
    arch = catalog.resolve(vision.task, vision.architecture, vision.pipeline)
    size = (
        (vision.input_size.width, vision.input_size.height)
        if vision.input_size is not None
        else (arch.default_size, arch.default_size)
    )
    if any(side % arch.multiple for side in size):
        raise ConfigError(
            f"spec.vision.inputSize {size[0]}x{size[1]}: {arch.name} needs a width and height "
            f"that are multiples of {arch.multiple}"
        )
    if min(size) < arch.min_side:
        raise ConfigError(
            f"spec.vision.inputSize {size[0]}x{size[1]}: {arch.name} needs a width and height "
            f"of at least {arch.min_side}"
        )
    weights = pretrained_weights(vision, arch, options, env)
    seed = spec.training.seed
    dataset = spec.dataset
    if dataset.synthetic is not None:
        classes = synthetic.class_names(vision.task, vision.num_classes)
        count = dataset.synthetic.samples
        require_enough(count, "synthetic")
        held = max(round(count * options.validation_fraction), 1)
        train = [Sample(synthetic=i) for i in range(count)]
        val = [Sample(synthetic=count + i) for i in range(held)]
        return Plan(arch, size, classes, len(classes), train, val, "synthetic", weights)
    if env.dataset_path is None:
        if dataset.uri is not None or env.dataset_uri:
            raise ConfigError(
                f"spec.dataset.uri {dataset.uri or env.dataset_uri} was not fetched: the "
                "operator's fetch stage puts it in the cache and sets KUBETRAIN_DATASET_PATH "
                "(outside the operator, set it to a local copy)"
            )
        raise ConfigError("KUBETRAIN_DATASET_PATH is not set (the dataset volume's directory)")
    index = read_dataset(env.dataset_path, vision.task, dataset.format, vision.num_classes)
    require_enough(index.count, index.source, skipped_note(index))
    train, val = _split(index, options.validation_fraction, seed)
    num_classes = class_count(index, vision.num_classes)
    if vision.task is VisionTask.SEMANTIC_SEGMENTATION and num_classes < 2:
        raise ConfigError(
            f"dataset {index.source} has {num_classes} class; semantic segmentation needs "
            "at least 2 (e.g. background and an object)"
        )
    classes = index.classes + [f"class {i}" for i in range(len(index.classes), num_classes)]
    return Plan(arch, size, classes, num_classes, train, val, index.source, weights)


def _split(index: DatasetIndex, fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if index.val:
        if not index.train:
            raise ConfigError(
                f"dataset {index.source} has a validation split but no training images"
            )
        return index.train, index.val
    return split(index.train, fraction, seed)


def pretrained_weights(
    vision: VisionConfig, arch: Architecture, options: VisionOptions, env: RuntimeEnv
) -> Path | None:
    """The weights file to start from: required when spec.vision.pretrained is true, because
    the trainer never downloads; a directory is searched for ``<architecture>.pth``."""
    if not vision.pretrained:
        if options.weights is not None:
            log.warning("%s is set but spec.vision.pretrained is false: training from scratch",
                        WEIGHTS_ENV)  # fmt: skip
        return None
    if options.weights is None:
        raise ConfigError(
            "spec.vision.pretrained is true but no weights file is given: the trainer never "
            f"downloads, so set {WEIGHTS_ENV} (spec.env) to a .pth state dict on a mounted "
            "volume, or set spec.vision.pretrained to false to train from scratch"
        )
    path = options.weights
    if not path.is_absolute() and env.dataset_path is not None:
        path = env.dataset_path / path
    if path.is_dir():
        candidates = [path / f"{arch.name}{suffix}" for suffix in (".pth", ".pt")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            files = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
            found = files[0] if len(files) == 1 else None
        if found is None:
            raise ConfigError(
                f"{WEIGHTS_ENV}: directory {path} has no {arch.name}.pth (or a single .pth file)"
            )
        return found
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_ENV}: {path} is not a file (the pretrained weights)")
    return path
