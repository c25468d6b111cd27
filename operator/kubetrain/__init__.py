"""kubetrain: a Kubernetes operator for GPU model training.

``kubetrain.Client`` and the SDK's errors are exported lazily: ``import kubetrain`` stays
cheap (the operator, the trainers and the CLI's startup never pay for the Kubernetes
client unless they use the SDK).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kubetrain.sdk import (
        Client,
        ConflictError,
        CostEstimate,
        JobPage,
        KubetrainError,
        NotFoundError,
        PermissionDeniedError,
        PollTimeoutError,
        ValidationError,
    )

_LAZY = frozenset(
    {
        "Client",
        "ConflictError",
        "CostEstimate",
        "JobPage",
        "KubetrainError",
        "NotFoundError",
        "PermissionDeniedError",
        "PollTimeoutError",
        "ValidationError",
    }
)

__all__ = [
    "Client",
    "ConflictError",
    "CostEstimate",
    "JobPage",
    "KubetrainError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollTimeoutError",
    "ValidationError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import the SDK on first use of one of its names."""
    if name in _LAZY:
        value = getattr(importlib.import_module("kubetrain.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kubetrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
