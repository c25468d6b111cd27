"""What each built image holds: exactly its lock, exactly the base's Debian packages, its
entry point, and nothing its entry point does not use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name
from tests.images.conftest import IMAGES
from tests.images.containers import image_config, oci, run_in_image

ROOT = Path(__file__).resolve().parents[2]

INSTALLED = """
import importlib.metadata as md, json, platform
print(json.dumps({
    "dists": sorted({(d.metadata["Name"], d.version) for d in md.distributions()}),
    "python": platform.python_version(),
    "libc": platform.libc_ver()[1],
}))
"""

LEFTOVERS = """
import importlib.util, json, os, shutil
tools = ("gcc", "cc", "c++", "make", "apt-get", "pip", "pip3")
found = [tool for tool in tools if shutil.which(tool)]
found += [m for m in ("pip", "tests", "ensurepip") if importlib.util.find_spec(m)]
for top in ("/root", "/tmp", "/var/cache/apt", "/var/lib/apt/lists", "/wheels", "/src", "/site"):
    if os.path.isdir(top) and os.listdir(top):
        found.append(top)
print(json.dumps(found))
"""


def lock_pins(path: Path) -> dict[str, str]:
    return {
        canonicalize_name(m[1]): m[2]
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", path.read_text(), re.M)
    }


def debian_pins() -> dict[str, str]:
    lines = (ROOT / "images" / "base" / "packages.lock").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("image", IMAGES)
def test_the_installed_distributions_are_exactly_the_images_lock(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    found = json.loads(run_in_image(built[image]["tag"], "python", "-c", INSTALLED))
    installed = {canonicalize_name(name): version for name, version in found["dists"]}
    wanted = lock_pins(ROOT / "images" / image / "requirements.lock")
    wanted["kubetrain"] = "0.1.0"
    extra = sorted(set(installed) - set(wanted))
    missing = sorted(set(wanted) - set(installed))
    differ = {
        n: (installed[n], wanted[n])
        for n in set(installed) & set(wanted)
        if installed[n] != wanted[n]
    }
    assert not (extra or missing or differ), (
        f"{image}: not in the lock {extra}; missing {missing}; other versions {differ}"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_holds_the_base_packages_the_same_python_and_libc(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    verify = ROOT / "images" / "base" / "verify.sh"
    result = oci(
        "podman", "run", "--rm", "--pull=never", "--network=none", "--read-only",
        f"--volume={verify}:/verify.sh:ro", "--entrypoint=sh", built[image]["tag"], "/verify.sh",
    )  # fmt: skip
    pins = debian_pins()
    python = pins["python3.11"].split("-")[0]
    libc = pins["libc6"].split("-")[0]
    assert f"base: CPython {python} glibc {libc}" in result.stdout
    found = json.loads(run_in_image(built[image]["tag"], "python", "-c", INSTALLED))
    assert (found["python"], found["libc"]) == (python, libc)


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_carries_nothing_its_entry_point_does_not_use(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    leftovers = json.loads(run_in_image(built[image]["tag"], "python", "-c", LEFTOVERS))
    assert leftovers == [], f"{image} carries {leftovers}"


@pytest.mark.parametrize(
    ("image", "user", "module"),
    [
        ("operator", "65532:65532", "kubetrain"),
        ("trainer-lora", "1000", "kubetrain.trainer.lora"),
        ("trainer-vision", "1000", "kubetrain.trainer.vision"),
    ],
)
def test_the_image_runs_its_program_as_pid_1_and_not_as_root(
    built: dict[str, dict[str, Any]], image: str, user: str, module: str
) -> None:
    config = image_config(built[image]["tag"])["Config"]
    assert config["User"] == user
    assert config["Entrypoint"] == ["python", "-m", module]
    resolved = run_in_image(
        built[image]["tag"], "python", "-c", "import sys; print(sys.executable, sys.prefix)"
    )
    assert resolved.split() == ["/opt/kubetrain/bin/python", "/opt/kubetrain"]
