"""The nodes one agent registers: names, labels, taints and capacity, and the default pool."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GPU_RESOURCE = "nvidia.com/gpu"
AGENT_LABEL = "kubetrain.io/node-agent"  # on every node an agent runs: value is the agent's name

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class NodeSpec:
    """One Node object the agent registers and keeps Ready."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    capacity: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] | None = None  # defaults to capacity

    def all_labels(self, agent: str) -> dict[str, str]:
        """The node's labels plus the well-known ones a kubelet sets."""
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _ARCH.get(platform.machine(), platform.machine()),
            AGENT_LABEL: agent,
            **self.labels,
        }


_BASE_CAPACITY = {"pods": "110", "ephemeral-storage": "2Ti", "hugepages-2Mi": "0"}


def gpu_labels(product: str, count: int, memory_mib: int, family: str) -> dict[str, str]:
    """Labels as NVIDIA's GPU feature discovery puts them on a GPU node."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.family": family,
    }


def default_pool() -> list[NodeSpec]:
    """What ``make cluster-up`` registers: an 8-GPU A100 node, an 8-GPU H100 node, a CPU node.

    Capacity is generous on purpose: the scheduler should be limited by GPUs and
    selectors, not by the small machine the processes really run on.
    """
    return [
        NodeSpec(
            "gpu-a100-0",
            labels=gpu_labels("NVIDIA-A100-SXM4-80GB", 8, 81920, "ampere"),
            capacity={**_BASE_CAPACITY, "cpu": "96", "memory": "1152Gi", GPU_RESOURCE: "8"},
        ),
        NodeSpec(
            "gpu-h100-0",
            labels=gpu_labels("NVIDIA-H100-80GB-HBM3", 8, 81559, "hopper"),
            capacity={**_BASE_CAPACITY, "cpu": "192", "memory": "2048Gi", GPU_RESOURCE: "8"},
        ),
        NodeSpec("cpu-0", capacity={**_BASE_CAPACITY, "cpu": "64", "memory": "256Gi"}),
    ]


def expand(entries: Iterable[Mapping[str, Any]]) -> list[NodeSpec]:
    """Node specs from config entries; an entry with ``count: n`` names nodes ``<name>-<i>``."""
    nodes: list[NodeSpec] = []
    for entry in entries:
        unknown = set(entry) - {"name", "count", "labels", "taints", "capacity", "allocatable"}
        if unknown:
            raise ValueError(f"node entry {entry.get('name')!r}: unknown keys {sorted(unknown)}")
        name = str(entry["name"])
        count = entry.get("count")
        names = [name] if count is None else [f"{name}-{i}" for i in range(int(count))]
        taints = tuple(
            {k: str(v) for k, v in taint.items() if k in ("key", "value", "effect")}
            for taint in entry.get("taints", [])
        )
        allocatable = entry.get("allocatable")
        for node_name in names:
            nodes.append(
                NodeSpec(
                    node_name,
                    labels={k: str(v) for k, v in entry.get("labels", {}).items()},
                    taints=taints,
                    capacity={k: str(v) for k, v in entry.get("capacity", {}).items()},
                    allocatable={k: str(v) for k, v in allocatable.items()}
                    if allocatable
                    else None,
                )
            )
    if len({n.name for n in nodes}) != len(nodes):
        raise ValueError("node names must be unique")
    return nodes


def load_pool(path: Path) -> list[NodeSpec]:
    """Node specs from a YAML file: ``nodes: [{name, count, labels, taints, capacity}]``."""
    document = yaml.safe_load(path.read_text()) or {}
    return expand(document.get("nodes", []))
