"""torchvision, imported in one place (it ships no type information)."""

from __future__ import annotations

import torchvision  # type: ignore[import-untyped]
from torchvision.models import detection, get_model, segmentation  # type: ignore[import-untyped]
from torchvision.ops import feature_pyramid_network  # type: ignore[import-untyped]
from torchvision.ops import misc as ops_misc

__all__ = [
    "detection",
    "feature_pyramid_network",
    "get_model",
    "ops_misc",
    "segmentation",
    "torchvision",
]
