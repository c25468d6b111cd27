"""Prints hack/requirements.lock as a pip constraints file (exact versions, no hashes).

The container images install with it (``PIP_CONSTRAINT``), so an image holds the versions
the tests ran. ``--keep-base-torch`` leaves out the torch stack (torch, torchvision,
triton, the CUDA libraries), which the trainer images take from their CUDA base image.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*)$")


def constraints(lock: str, keep_base_torch: bool = False) -> list[str]:
    pins = [m.group(1, 2) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)", lock, re.M)]
    return [
        f"{name}=={version}"
        for name, version in pins
        if not (keep_base_torch and TORCH_STACK.match(name.lower()))
    ]


if __name__ == "__main__":
    lock = Path(__file__).with_name("requirements.lock").read_text()
    print("\n".join(constraints(lock, keep_base_torch="--keep-base-torch" in sys.argv[1:])))
