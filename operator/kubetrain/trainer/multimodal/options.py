"""The multimodal trainer's own knobs and its checks that run before torch is imported.

The knobs are the LoRA trainer's environment variables (``KUBETRAIN_VALIDATION_FRACTION``,
``KUBETRAIN_MERGE_ADAPTER``, ``KUBETRAIN_ATTENTION``, ``KUBETRAIN_PEAK_TFLOPS``), read the
same way; packing does not apply to samples with images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetrain.api import ModelType, TrainingJobSpec
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.lora.data import Records, require_enough
from kubetrain.trainer.lora.options import LoraOptions, dataset_records
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
    records = dataset_records(env, spec, synthetic=synthetic_records, read=read_records)
    require_enough(len(records.items), records.source)
    return records
