"""Where a job's workers run and what each one requests: its GPU type resolved against the
operator's catalogue (pure; the renderers and the plan share it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetrain.api.catalogue import GPUType
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.operator.settings import Settings

JSON = dict[str, Any]


@dataclass(frozen=True)
class Placement:
    """Where workers run and what each one requests, resolved from the GPU catalogue."""

    gpu_type: str
    entry: GPUType
    gpus_per_worker: int
    cpu: str | None
    memory: str | None
    admitted_labels: tuple[tuple[str, str], ...] = ()
    """Node labels of the ResourceFlavor Kueue admitted the workers on (none without Kueue)."""
    admitted_tolerations: tuple[JSON, ...] = ()
    """Tolerations of that ResourceFlavor."""

    @classmethod
    def resolve(cls, spec: TrainingJobSpec, gpu_type: str, entry: GPUType) -> Placement:
        return cls(
            gpu_type=gpu_type,
            entry=entry,
            gpus_per_worker=spec.resources.gpus_per_worker if entry.is_gpu else 0,
            cpu=spec.resources.cpu or entry.worker_cpu,
            memory=spec.resources.memory or entry.worker_memory,
        )


def resources(placement: Placement) -> JSON:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if placement.cpu:
        requests["cpu"] = placement.cpu
    if placement.memory:
        requests["memory"] = limits["memory"] = placement.memory
    if placement.entry.resource_name and placement.gpus_per_worker:
        gpus = str(placement.gpus_per_worker)
        requests[placement.entry.resource_name] = limits[placement.entry.resource_name] = gpus
    out: JSON = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


PRODUCT_WEIGHT = 100
"""The weight of a preferred product (the most a preference can weigh)."""


def affinity(entry: GPUType) -> JSON | None:
    """The entry's products on its product label: required with requireProducts, else only
    preferred (the GPU resource request alone decides where a worker may run)."""
    if not entry.products:
        return None
    term = {
        "matchExpressions": [
            {"key": entry.product_label, "operator": "In", "values": list(entry.products)}
        ]
    }
    if entry.require_products:
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    preferred = [{"weight": PRODUCT_WEIGHT, "preference": term}]
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}


def placement_for(spec: TrainingJobSpec, settings: Settings) -> Placement | None:
    """The job's GPU type resolved against the catalogue; None when it is not there."""
    gpu_type = settings.catalogue.gpu_type_for(spec)
    entry = settings.catalogue.get(gpu_type)
    return None if entry is None else Placement.resolve(spec, gpu_type, entry)
