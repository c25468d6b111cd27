"""Cost estimates from the operator's GPU catalogue; pure apart from the caller's read.

The Helm chart publishes the operator's configuration in a ConfigMap (``kubetrain-config``,
key ``config.yaml``, namespace ``kubetrain-system``). Its ``catalogue`` section holds the
prices this cluster's operator charges jobs with, so estimates use it; when it cannot be
read, the built-in defaults are used and the estimate says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pydantic
import yaml

from kubetrain.api.catalogue import Catalogue
from kubetrain.sdk.errors import Cause, ValidationError

CONFIG_NAMESPACE = "kubetrain-system"
CONFIG_MAP = "kubetrain-config"
CONFIG_KEY = "config.yaml"

SOURCE_CLUSTER = "cluster"
SOURCE_DEFAULTS = "defaults"


class CatalogueFallbackWarning(UserWarning):
    """The cluster's GPU catalogue could not be read; the built-in prices were used."""


@dataclass(frozen=True)
class CostEstimate:
    """What ``workers`` x ``gpus_per_worker`` of ``gpu_type`` cost per hour and in total."""

    gpu_type: str
    workers: int
    gpus_per_worker: int
    price_per_hour: float
    """USD per GPU-hour (per worker-hour for CPU-only types): the catalogue's price."""
    billed_units: int
    """GPUs (or, CPU-only, workers) the price applies to."""
    hourly_usd: float
    hours: float | None
    total_usd: float | None
    source: str
    """``cluster`` (the operator's ConfigMap) or ``defaults`` (built-in prices)."""
    warning: str | None = None
    """Why the built-in prices were used, when they were."""

    def as_dict(self) -> dict[str, Any]:
        """camelCase, for ``-o json``."""
        data = asdict(self)
        return {
            "gpuType": data["gpu_type"],
            "workers": data["workers"],
            "gpusPerWorker": data["gpus_per_worker"],
            "pricePerHour": data["price_per_hour"],
            "billedUnits": data["billed_units"],
            "hourlyUSD": data["hourly_usd"],
            "hours": data["hours"],
            "totalUSD": data["total_usd"],
            "source": data["source"],
            "warning": data["warning"],
        }


def catalogue_from_config(text: str) -> Catalogue:
    """The ``catalogue`` section of an operator config file (YAML, camelCase)."""
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        raise ValueError("the operator config is not a mapping")
    section = loaded.get("catalogue") or {}
    try:
        return Catalogue.model_validate(section)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"catalogue.{where}: {first['msg']}") from None


def estimate(
    catalogue: Catalogue,
    gpu_type: str | None,
    workers: int = 1,
    gpus_per_worker: int = 1,
    hours: float | None = None,
    *,
    source: str = SOURCE_CLUSTER,
    warning: str | None = None,
) -> CostEstimate:
    """Price a job as the operator does: per GPU-hour, or per worker-hour on CPU-only types."""
    key = gpu_type or catalogue.default_type
    problems = []
    if workers < 1:
        problems.append(Cause("workers", "must be at least 1"))
    if gpus_per_worker < 1:
        problems.append(Cause("gpusPerWorker", "must be at least 1"))
    if hours is not None and hours < 0:
        problems.append(Cause("hours", "must not be negative"))
    entry = catalogue.get(key)
    if entry is None:
        problems.append(
            Cause(
                "gpuType",
                f"{key!r} is not in the GPU catalogue ({source}); "
                f"available: {', '.join(catalogue.names)}",
            )
        )
    if problems or entry is None:
        first = problems[0]
        raise ValidationError(f"{first.field}: {first.rule}", problems)
    units = workers * gpus_per_worker if entry.is_gpu else workers
    hourly = round(entry.price_per_hour * units, 4)
    return CostEstimate(
        gpu_type=key,
        workers=workers,
        gpus_per_worker=gpus_per_worker if entry.is_gpu else 0,
        price_per_hour=entry.price_per_hour,
        billed_units=units,
        hourly_usd=hourly,
        hours=hours,
        total_usd=None if hours is None else round(hourly * hours, 4),
        source=source,
        warning=warning,
    )
