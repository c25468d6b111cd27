"""The LoRA trainer's own knobs and its checks that run before torch is imported.

Everything else comes from the TrainingJob spec; these few are environment variables
(settable through ``spec.env``) because they tune this trainer rather than describe the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetrain.api import ModelType, TrainingJobSpec
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.lora.data import (
    Records,
    read_records,
    require_enough,
    synthetic_records,
    unusable_note,
)


@dataclass(frozen=True)
class LoraOptions:
    """Trainer-specific settings: validation split, packing, merged output, attention kernel."""

    validation_fraction: float = 0.1
    packing: bool = True
    merge_adapter: bool = False
    attention: str = "sdpa"
    peak_tflops: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LoraOptions:
        fraction = environ.get("KUBETRAIN_VALIDATION_FRACTION", "0.1")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigError(
                f"KUBETRAIN_VALIDATION_FRACTION={fraction!r} is not a number"
            ) from None
        if not 0 <= value < 1:
            raise ConfigError(f"KUBETRAIN_VALIDATION_FRACTION={fraction} must be in [0, 1)")
        peak = environ.get("KUBETRAIN_PEAK_TFLOPS")
        return cls(
            validation_fraction=value,
            packing=_flag(environ, "KUBETRAIN_PACKING", True),
            merge_adapter=_flag(environ, "KUBETRAIN_MERGE_ADAPTER", False),
            attention=environ.get("KUBETRAIN_ATTENTION") or "sdpa",
            peak_tflops=float(peak) if peak else None,
        )


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def preflight(env: RuntimeEnv, spec: TrainingJobSpec) -> Records:
    """Check what can be checked without torch; returns the dataset's records."""
    if spec.model_type is not ModelType.LLM or spec.llm is None:
        raise ConfigError(
            f"spec.modelType is {spec.model_type.value}: the LoRA trainer trains modelType llm"
        )
    records = dataset_records(env, spec, synthetic=synthetic_records, read=read_records)
    require_enough(len(records.items), records.source, unusable_note(records))
    return records


def dataset_records(
    env: RuntimeEnv,
    spec: TrainingJobSpec,
    *,
    synthetic: Callable[[int, int], Records],
    read: Callable[[Path, str | None], Records],
) -> Records:
    """The job's records, from the trainer's own ``synthetic(samples, seed)`` or
    ``read(path, format)``; a spec.llm.baseModel path that is no directory fails first."""
    assert spec.llm is not None, "the trainer's preflight checked spec.llm"
    base = spec.llm.base_model
    if base.startswith(("/", "./", "../")) and not Path(base).is_dir():
        raise ConfigError(f"spec.llm.baseModel: {base} is not a directory (no model there)")
    dataset = spec.dataset
    if dataset.synthetic is not None:
        return synthetic(dataset.synthetic.samples, spec.training.seed)
    if env.dataset_path is not None:
        return read(env.dataset_path, dataset.format.value if dataset.format is not None else None)
    if dataset.uri is not None or env.dataset_uri:
        raise ConfigError(
            f"spec.dataset.uri {dataset.uri or env.dataset_uri} was not fetched: the operator's "
            "fetch stage puts it in the cache and sets KUBETRAIN_DATASET_PATH (outside the "
            "operator, set it to a local copy)"
        )
    raise ConfigError("KUBETRAIN_DATASET_PATH is not set (the dataset volume's file or directory)")
