"""The images' recipes agree with the rest of the project (no image is built here: the image
tier, tests/images, runs the built ones).

Every Dockerfile starts from kubetrain's own base, installs its lock, runs what the operator
tells its Pods to run, and the base's two recipes (mmdebstrap here, Docker elsewhere) install
the same Debian packages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetrain.operator.settings import TrainerImages
from kubetrain.trainer import driver

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
BASE = IMAGES / "base"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def pins(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("image", ["operator", "trainer-lora", "trainer-vision"])
def test_every_image_starts_from_kubetrains_base_and_nothing_else(image: str) -> None:
    froms = [args for word, args in instructions(IMAGES / image / "Dockerfile") if word == "FROM"]
    assert froms and all(args.split()[0] == "${BASE}" for args in froms), froms
    args = [a for word, a in instructions(IMAGES / image / "Dockerfile") if word == "ARG"]
    assert "BASE=localhost/kubetrain/base:latest" in args


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("trainer-lora", TrainerImages().llm_command),
        ("trainer-vision", TrainerImages().vision_command),
        ("operator", ["python", "-m", "kubetrain"]),
    ],
)
def test_the_entrypoint_is_what_the_operator_runs_in_the_image(
    image: str, command: list[str]
) -> None:
    entry = [a for word, a in instructions(IMAGES / image / "Dockerfile") if word == "ENTRYPOINT"]
    assert [json.loads(a) for a in entry] == [command]


def test_the_multimodal_trainer_runs_in_the_lora_image() -> None:
    settings = TrainerImages()
    assert settings.multimodal == settings.llm
    dockerfile = (IMAGES / "trainer-lora" / "Dockerfile").read_text()
    assert settings.multimodal_command[-1] + ".train" in dockerfile  # the build imports it


def test_the_base_lock_holds_what_packages_in_asks_for_and_the_locks_python() -> None:
    locked = pins(BASE / "packages.lock")
    wanted = [line for line in (BASE / "packages.in").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert not [p for p in wanted if p not in locked], "run make lock-base"
    # The Python hack/requirements.lock was solved for (hack/lock-python.sh).
    solved_for = re.search(
        r"--python-version (\d+\.\d+)", (ROOT / "hack" / "lock-python.sh").read_text()
    )
    assert solved_for is not None
    assert locked["python3.11"].startswith(solved_for[1] + ".")
    assert "libc6" in locked
    assert "apt" not in locked, "the base needs no package manager at run time"


def test_both_base_recipes_install_the_locked_packages() -> None:
    """The Docker recipe installs every pin of packages.lock and runs verify.sh, which refuses
    any other version; hack/build-base.sh installs the same list and diffs the result."""
    docker = instructions(BASE / "Dockerfile")
    assert ("COPY", "packages.lock /usr/share/kubetrain/base-packages.lock") in docker
    install = next(args for word, args in docker if word == "RUN" and "apt-get install" in args)
    assert "$(grep -v '^#' /usr/share/kubetrain/base-packages.lock)" in install
    assert any("verify.sh" in args for word, args in docker if word == "RUN")
    script = (ROOT / "hack" / "build-base.sh").read_text()
    assert '"$base/packages.lock" /usr/share/kubetrain/base-packages.lock' in script
    assert 'rootfs custom "$(listed "$base/packages.lock"' in script


@pytest.mark.parametrize("image", ["trainer-lora", "trainer-vision"])
def test_the_trainer_images_state_the_cuda_and_driver_the_runtime_checks(image: str) -> None:
    """The labels say what ``kubetrain.trainer.driver`` enforces for the locked CUDA wheels
    (this venv installs the same lock, so its CUDA runtime is the image's)."""
    labels = dict(
        re.findall(
            r'(io\.kubetrain\.cuda\.[a-z-]+)="([^"]+)"', (IMAGES / image / "Dockerfile").read_text()
        )
    )
    cuda = driver.image_cuda()
    assert cuda is not None
    assert labels == {
        "io.kubetrain.cuda.version": cuda,
        "io.kubetrain.cuda.driver-min": driver.minimum_driver(cuda),
    }
    readme = (IMAGES / image / "README.md").read_text()
    assert f"CUDA {cuda}" in readme and labels["io.kubetrain.cuda.driver-min"] in readme
