"""What each built image holds: exactly its lock, exactly the base's Debian packages, its
entry point, and nothing its entry point does not use."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name
from tests.images.conftest import IMAGES
from tests.images.containers import image_config, oci, run_in_image
from tests.unit.test_images import pins as debian_pins
from tests.unit.test_pins import python_lock

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
# Caches, downloads and build leftovers: any file with content, or anything in /tmp.
for top in ("/root/.cache", "/var/cache/apt", "/var/lib/apt/lists", "/wheels", "/src", "/site"):
    for folder, _, files in os.walk(top):
        found += [os.path.join(folder, f) for f in files
                  if os.path.getsize(os.path.join(folder, f)) > 0]
found += [os.path.join("/tmp", f) for f in os.listdir("/tmp")]
print(json.dumps(found))
"""


UNRESOLVED = r"""
import json, pathlib, subprocess, sys
missing = {}
for lib in sorted(pathlib.Path(sys.prefix).rglob("*.so*")):
    if not lib.is_file() or ".so" not in lib.name:
        continue
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    gone = [l.split()[0] for l in out.splitlines() if "not found" in l]
    if gone:
        missing[str(lib.relative_to(sys.prefix))] = gone
print(json.dumps(missing))
"""


@functools.cache
def unresolved_in_the_tests_venv() -> dict[str, list[str]]:
    host = subprocess.run([sys.executable, "-c", UNRESOLVED], capture_output=True, text=True,
                          check=True, timeout=900).stdout  # fmt: skip
    found: dict[str, list[str]] = json.loads(host)
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_the_installed_distributions_are_exactly_the_images_lock(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    found = json.loads(run_in_image(built[image]["tag"], "python", "-c", INSTALLED))
    installed = {canonicalize_name(name): version for name, version in found["dists"]}
    share = python_lock(ROOT / "images" / image / "requirements.lock")
    wanted = {name: version for name, (version, _) in share.items()} | {"kubetrain": "0.1.0"}
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
        "podman", "run", "--rm", "--pull=never", "--passwd=false", "--network=none", "--read-only",
        f"--volume={verify}:/verify.sh:ro", "--entrypoint=sh", built[image]["tag"], "/verify.sh",
    )  # fmt: skip
    pins = debian_pins(ROOT / "images" / "base" / "packages.lock")
    python = pins["python3.11"].split("-")[0]
    libc = pins["libc6"].split("-")[0]
    assert f"base: CPython {python} glibc {libc}" in result.stdout
    found = json.loads(run_in_image(built[image]["tag"], "python", "-c", INSTALLED))
    assert (found["python"], found["libc"]) == (python, libc)


@pytest.mark.parametrize("image", IMAGES)
def test_every_shared_library_in_the_image_finds_its_dependencies(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    """The base has every system library the wheels link against (the C++ runtime,
    libquadmath...) that the machine the tests ran on has: what ``ldd`` cannot resolve in the
    image, it cannot resolve in the tests' .venv either (the optional RDMA, MPI and UCX
    transports of NCCL's and cuFile's plugins, libraries loaded after torch's own)."""
    found = run_in_image(built[image]["tag"], "python", "-c", UNRESOLVED, timeout=900)
    tested = unresolved_in_the_tests_venv()
    only_here = {
        lib: sorted(set(gone) - set(tested.get(lib, [])))
        for lib, gone in json.loads(found).items()
        if set(gone) - set(tested.get(lib, []))
    }
    assert only_here == {}, f"{image}: libraries the tests' .venv resolves, the image not"


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_carries_nothing_its_entry_point_does_not_use(
    built: dict[str, dict[str, Any]], image: str
) -> None:
    leftovers = json.loads(run_in_image(built[image]["tag"], "python", "-c", LEFTOVERS, user="0"))
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
    oci("podman", "image", "exists", built[image]["ref"])  # the name the chart pulls by default
    config = image_config(built[image]["tag"])["Config"]
    assert config["User"] == user
    assert config["Entrypoint"] == ["python", "-m", module]
    resolved = run_in_image(
        built[image]["tag"], "python", "-c", "import sys; print(sys.executable, sys.prefix)"
    )
    assert resolved.split() == ["/opt/kubetrain/bin/python", "/opt/kubetrain"]
