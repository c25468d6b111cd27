"""The multimodal trainer's own knobs and its checks that run before torch is imported.

The knobs are the LoRA trainer's environment variables (``KUBETRAIN_VALIDATION_FRACTION``,
``KUBETRAIN_MERGE_ADAPTER``, ``KUBETRAIN_ATTENTION``, ``KUBETRAIN_PEAK_TFLOPS``), read the
same way; packing does not apply to samples with images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetrain.api import ModelType, TrainingJobSpec
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.lora.data import Records, require_enough
from kubetrain.trainer.lora.options import LoraOptions
from kubetrain.trainer.multimodal.data import read_records, synthetic_records


@dataclass(frozen=True)
class MultimodalOptions:
    """Trainer-specific settings: validation split, merged output, attention kernel."""

    validation_fraction: float = 0.1
    merge_adapter: bool = False
    attention: str = "sdpa"
    peak_tflops: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> MultimodalOptions:
        lora = LoraOptions.from_env(environ)
        return cls(
            validation_fraction=lora.validation_fraction,
            merge_adapter=lora.merge_adapter,
            attention=lora.attention,
            peak_tflops=lora.peak_tflops,
        )


def preflight(env: RuntimeEnv, spec: TrainingJobSpec) -> Records:
    """Check what can be checked without torch; returns the dataset's records."""
    if spec.model_type is not ModelType.MULTIMODAL or spec.llm is None:
        raise ConfigError(
            f"spec.modelType is {spec.model_type.value}: "
            "the multimodal trainer trains modelType multimodal"
        )
    base = spec.llm.base_model
    if base.startswith(("/", "./", "../")) and not Path(base).is_dir():
        raise ConfigError(f"spec.llm.baseModel: {base} is not a directory (no model there)")
    dataset = spec.dataset
    if dataset.synthetic is not None:
        records = synthetic_records(dataset.synthetic.samples, spec.training.seed)
    elif env.dataset_path is not None:
        fmt = dataset.format.value if dataset.format is not None else None
        records = read_records(env.dataset_path, fmt)
    elif dataset.uri is not None or env.dataset_uri:
        raise ConfigError(
            f"spec.dataset.uri {dataset.uri or env.dataset_uri} was not fetched: the operator's "
            "fetch stage puts it in the cache and sets KUBETRAIN_DATASET_PATH (outside the "
            "operator, set it to a local copy)"
        )
    else:
        raise ConfigError(
            "KUBETRAIN_DATASET_PATH is not set (the dataset volume's file or directory)"
        )
    require_enough(len(records.items), records.source)
    return records
