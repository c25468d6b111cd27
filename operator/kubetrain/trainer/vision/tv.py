"""torchvision, imported in one place (it ships no type information)."""

from __future__ import annotations

import torchvision  # type: ignore[import-untyped]
from torchvision.models import detection, get_model, segmentation  # type: ignore[import-untyped]
from torchvision.ops import misc as ops_misc  # type: ignore[import-untyped]

__all__ = ["detection", "get_model", "ops_misc", "segmentation", "torchvision"]
