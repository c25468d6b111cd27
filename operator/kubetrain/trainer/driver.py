"""Whether the node's NVIDIA driver can run the CUDA this image's torch was built with.

A CUDA runtime newer than the driver leaves torch without a GPU (or fails in a CUDA call)
on every attempt; checked here first, without importing torch, the job fails at once and
for good, naming the node's driver and what the image needs.

``python -m kubetrain.trainer.driver`` prints the three versions on a node and exits
``EXIT_PERMANENT`` with the message when its driver is too old (0 when fine).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from kubetrain.api.report import EXIT_PERMANENT, permanent_message
from kubetrain.trainer.runtime import TrainerError

if TYPE_CHECKING:
    from kubetrain.api import TrainingJobSpec

log = logging.getLogger(__name__)

MINIMUM_DRIVER: dict[int, str] = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}
"""CUDA major -> the oldest driver all its minors run on (NVIDIA minor version compatibility)."""

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
CUDA_RUNTIMES = (
    "nvidia-cuda-runtime",
    "nvidia-cuda-runtime-cu13",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime-cu11",
)
"""The distributions that ship torch's CUDA runtime: 13.x wheels drop the ``-cuNN`` suffix."""

_NVRM = re.compile(r"^NVRM version:.*?Kernel Module\b.*?\s(\d+(?:\.\d+)+)(?=\s|$)", re.MULTILINE)
_RUNTIME_REQUIREMENT = re.compile(r"^\s*(nvidia-cuda-runtime(?:-cu\d+)?)\b", re.IGNORECASE)
_NOT_A_DEVICE_LIST = frozenset({"", "all", "none", "void"})


class DriverError(TrainerError):
    """The node's NVIDIA driver cannot run this image's CUDA: no retry on this node cures it."""


def image_cuda() -> str | None:
    """The CUDA version (``13.2``) of the runtime torch was installed with, read from package
    metadata so torch is not imported; None without a CUDA runtime (a CPU build of torch)."""
    for name in _runtime_candidates():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        major, _, rest = version.partition(".")
        minor = rest.partition(".")[0]
        if major.isdigit() and minor.isdigit():
            return f"{int(major)}.{int(minor)}"
    return None


def _runtime_candidates() -> list[str]:
    """The runtime torch's own metadata requires first (a stale one beside it is not the one
    it loads), then the known names."""
    try:
        required = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        required = []
    named = [m.group(1).lower() for r in required if (m := _RUNTIME_REQUIREMENT.match(r))]
    return [*named, *(n for n in CUDA_RUNTIMES if n not in named)]


def read_driver_version(path: Path = DRIVER_VERSION_FILE) -> str | None:
    """The NVIDIA kernel module's version (``535.104.05``), proprietary or open; None when no
    driver is loaded (the file is absent). A file that names no version gives its first line,
    which ``check_driver`` leaves unchecked."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("cannot read %s: %s", path, err)
        return None
    if match := _NVRM.search(text):
        return match.group(1)
    return text.strip().partition("\n")[0]


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def minimum_driver(cuda: str) -> str | None:
    """The oldest driver that runs CUDA ``cuda`` (``13.2``); None for a major not in the table."""
    major = cuda.partition(".")[0]
    return MINIMUM_DRIVER.get(int(major)) if major.isdigit() else None


def check_driver(driver: str | None, cuda: str | None) -> None:
    """Raise ``DriverError`` when the image has CUDA ``cuda`` and the node's driver (None: none
    visible) is older than it needs; nothing to check without CUDA or for an unknown major."""
    minimum = minimum_driver(cuda) if cuda else None
    if cuda is None or minimum is None:
        return
    remedy = f"run the job on nodes with an NVIDIA driver >= {minimum}"
    if driver is None:
        raise DriverError(
            f"no NVIDIA driver is visible in the container ({DRIVER_VERSION_FILE} is absent) "
            f"and this image's CUDA {cuda} needs driver >= {minimum}: "
            "the node has no NVIDIA driver loaded, or the NVIDIA device plugin or container "
            f"toolkit did not expose it; fix the node, or {remedy}"
        )
    have, need = _version(driver), _version(minimum)
    if have is None or need is None:
        log.warning("cannot compare NVIDIA driver %r with %s; not checked", driver, minimum)
        return
    if have < need:
        raise DriverError(
            f"the node's NVIDIA driver {driver} is older than this image's CUDA {cuda} needs "
            f"(driver >= {minimum}): upgrade the node's driver, or {remedy} "
            "(the GPU catalogue entry's nodeSelector or products choose the nodes)"
        )


def gpus_given(environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> bool:
    """Whether the container was given an NVIDIA GPU: ``NVIDIA_VISIBLE_DEVICES`` naming
    devices (the device plugin's allocation, there even where the toolkit did not act) or a
    ``/dev/nvidiaN`` node (the toolkit, CDI or GKE's plugin made it). ``all`` is not a sign:
    CUDA base images set it for every container."""
    visible = environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    return visible not in _NOT_A_DEVICE_LIST or any(dev.glob("nvidia[0-9]*"))


def require_driver(
    spec: TrainingJobSpec,
    *,
    driver: Callable[[], str | None] = read_driver_version,
    cuda: Callable[[], str | None] = image_cuda,
    gpus: Callable[[], bool] = gpus_given,
) -> None:
    """Fail a GPU job whose node driver cannot run the image's CUDA (``check_driver``).

    A GPU job is one whose spec asks for GPUs (``uses_gpus``: gpuType is not ``cpu``, the
    API's own rule) and whose container was given one (``gpus_given``). The spec alone is not
    enough: the trainer cannot see the catalogue, so a gpuType resolved to a CPU-only or
    non-NVIDIA entry, or a stand-in GPU node of the local cluster, would fail as driverless;
    the Pod's env alone is not either, as the downward API cannot show a GPU limit.
    """
    if not spec.uses_gpus() or not gpus():
        return
    check_driver(driver(), cuda())


def main(
    *,
    driver: Callable[[], str | None] = read_driver_version,
    cuda: Callable[[], str | None] = image_cuda,
) -> int:
    """Print the image's CUDA, the driver it needs and the node's; ``EXIT_PERMANENT`` with the
    message when the driver cannot run it (none visible included), else 0."""
    found, image = driver(), cuda()
    minimum = minimum_driver(image) if image else None
    print(f"image CUDA:     {image or 'none (CPU build of torch)'}")
    print(f"minimum driver: {minimum or '-'}")
    print(f"node driver:    {found or 'none visible'}")
    try:
        check_driver(found, image)
    except DriverError as err:
        print(permanent_message(err.reason, str(err)), file=sys.stderr)
        return EXIT_PERMANENT
    return 0


if __name__ == "__main__":
    sys.exit(main())
