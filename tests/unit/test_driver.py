"""The driver check: a node whose NVIDIA driver is older than the image's CUDA needs fails a
GPU job at once, for good, naming both versions; CPU jobs are never checked."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubetrain.api import TrainingJobSpec
from kubetrain.api.report import EXIT_PERMANENT, read_permanent
from kubetrain.trainer import entry
from kubetrain.trainer.config import RuntimeEnv, parse_spec
from kubetrain.trainer.driver import (
    DriverError,
    check_driver,
    gpus_given,
    image_cuda,
    main,
    minimum_driver,
    read_driver_version,
    require_driver,
)
from kubetrain.trainer.runtime import Outcome, TrainerError, run_entry

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "modelType": "llm",
    "dataset": {"pvc": {"claimName": "data"}},
    "llm": {"baseModel": "org/model"},
}

# /proc/driver/nvidia/version as the proprietary and the open kernel modules write it.
PROPRIETARY_535 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04) \n"
)
PROPRIETARY_ARM_570 = (
    "NVRM version: NVIDIA UNIX aarch64 Kernel Module  570.172.08  Tue Jul  8 17:36:46 UTC 2025\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n"
)
OPEN_580 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\n"
    "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n"
)
OPEN_590 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  590.44.01  Release Build  "
    "(dvs-builder@U22-I3-AF03-09-1)  Tue Nov 18 12:05:11 UTC 2025\n"
    "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n"
)
OLD_450 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  450.80.02  Wed Sep 23 01:13:39 UTC 2020\n"
    "GCC version:  gcc version 7.5.0 (Ubuntu 7.5.0-3ubuntu1~18.04) \n"
)


def job(**resources: object) -> TrainingJobSpec:
    return parse_spec(json.dumps(SPEC | {"resources": resources}))


def never() -> str | None:
    raise AssertionError("a job that is not checked must not probe the node")


def version_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "version"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (PROPRIETARY_535, "535.104.05"),
        (PROPRIETARY_ARM_570, "570.172.08"),
        (OPEN_580, "580.65.06"),
        (OPEN_590, "590.44.01"),
        (OLD_450, "450.80.02"),
    ],
)
def test_the_kernel_modules_version_is_read(tmp_path: Path, text: str, version: str) -> None:
    assert read_driver_version(version_file(tmp_path, text)) == version


def test_no_version_file_means_no_driver(tmp_path: Path) -> None:
    assert read_driver_version(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("text", "cuda"),
    [
        (PROPRIETARY_535, "13.2"),
        (PROPRIETARY_ARM_570, "13.2"),
        (PROPRIETARY_ARM_570, "13.0"),
        (OLD_450, "12.8"),
        (PROPRIETARY_535, "13.0"),
    ],
)
def test_a_driver_older_than_the_image_needs_fails_permanently_naming_both(
    tmp_path: Path, text: str, cuda: str
) -> None:
    path = version_file(tmp_path, text)
    driver = read_driver_version(path)
    spec = job(gpuType="a100")
    with pytest.raises(DriverError) as raised:
        require_driver(
            spec, driver=functools.partial(read_driver_version, path), cuda=lambda: cuda,
            gpus=lambda: True,
        )  # fmt: skip
    err = raised.value
    assert isinstance(err, TrainerError) and err.reason == "ConfigurationError"
    message = str(err)
    assert driver is not None and f"driver {driver}" in message
    assert f"CUDA {cuda}" in message and f">= {minimum_driver(cuda)}" in message
    assert "upgrade the node's driver" in message and "\n" not in message


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("580.65.06", "13.2"),  # CUDA 13.0 GA's driver runs every 13.x
        ("580.105.08", "13.0"),
        ("590.44.01", "13.2"),
        ("1000.1", "13.2"),  # compared as numbers, not as text
        ("535.104.05", "12.8"),
        ("525.60.13", "12.0"),
        ("450.80.02", "11.8"),
        ("470.256.02", "11.4"),
        ("535.104.05", None),  # a CPU build of torch: nothing to check
        (None, None),
        ("535.104.05", "10.2"),  # a major the table does not know: not guessed
        ("not a version", "13.2"),  # what cannot be compared is left alone
    ],
)
def test_a_driver_new_enough_or_nothing_to_compare_passes(
    driver: str | None, cuda: str | None
) -> None:
    check_driver(driver, cuda)
    require_driver(job(gpuType="h100"), driver=lambda: driver, cuda=lambda: cuda, gpus=lambda: True)


@pytest.mark.parametrize("gpus", [True, False])
def test_cpu_jobs_are_never_checked(gpus: bool) -> None:
    require_driver(job(gpuType="cpu"), driver=never, cuda=never, gpus=lambda: gpus)


def test_a_gpu_job_given_no_gpu_is_not_checked() -> None:
    """A gpuType the catalogue maps to CPU or a non-NVIDIA device, or the local cluster's
    stand-in GPU nodes: no driver there is expected, not a node fault."""
    require_driver(job(gpuType="a100"), driver=never, cuda=never, gpus=lambda: False)
    require_driver(job(), driver=never, cuda=never, gpus=lambda: False)


def test_no_driver_visible_on_a_gpu_job_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(DriverError) as raised:
        require_driver(
            job(),  # no gpuType: the catalogue's default, a GPU
            driver=functools.partial(read_driver_version, tmp_path / "absent"),
            cuda=lambda: "13.2",
            gpus=lambda: True,
        )
    message = str(raised.value)
    assert raised.value.reason == "ConfigurationError"
    assert message.startswith("no NVIDIA driver is visible in the container")
    assert "CUDA 13.2 needs driver >= 580.65.06" in message
    assert "NVIDIA device plugin or container toolkit" in message


@pytest.mark.parametrize(
    ("visible", "devices", "given"),
    [
        ("GPU-8f8a2d3c-5b1e-4c55-9a0e-3f1d2c4b5a69", [], True),  # the device plugin's choice
        ("0,1", [], True),
        ("/var/run/nvidia-container-devices", [], True),  # volume-mounts strategy
        (None, ["nvidia0", "nvidiactl", "nvidia-uvm"], True),  # CDI, GKE
        ("void", ["nvidia3"], True),
        ("all", [], False),  # CUDA base images set it for every container
        ("void", [], False),
        ("none", ["nvidiactl"], False),
        (None, [], False),
        ("", ["nvidia-uvm", "nvidia-caps"], False),
    ],
)
def test_a_gpu_is_given_by_the_device_plugins_env_or_a_device_node(
    tmp_path: Path, visible: str | None, devices: list[str], given: bool
) -> None:
    for name in devices:
        (tmp_path / name).touch()
    environ = {} if visible is None else {"NVIDIA_VISIBLE_DEVICES": visible}
    assert gpus_given(environ, tmp_path) is given


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETRAIN_TERMINATION_LOG", str(path))
    return path


def test_run_entry_turns_an_old_driver_into_exit_78_and_its_message(
    tmp_path: Path, termination_log: Path
) -> None:
    path = version_file(tmp_path, PROPRIETARY_535)

    def run() -> Outcome:
        require_driver(
            job(gpuType="a100"), driver=functools.partial(read_driver_version, path),
            cuda=lambda: "13.2", gpus=lambda: True,
        )  # fmt: skip
        raise AssertionError("the trainer must not go on")

    assert run_entry(run) == EXIT_PERMANENT == 78
    text = termination_log.read_text()
    assert text.count("\n") == 1
    reason, message = read_permanent(text)
    assert reason == "ConfigurationError"
    assert message.startswith("the node's NVIDIA driver 535.104.05 is older than this image's")
    assert "CUDA 13.2" in message and "driver >= 580.65.06" in message


def test_every_trainer_checks_the_driver_before_its_own_check(
    tmp_path: Path, termination_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETRAIN_CONFIG", json.dumps(SPEC | {"resources": {"gpuType": "l4"}}))
    monkeypatch.setenv("KUBETRAIN_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(
        entry,
        "require_driver",
        functools.partial(
            require_driver, driver=lambda: "570.172.08", cuda=lambda: "13.2", gpus=lambda: True
        ),
    )

    def check(env: RuntimeEnv, spec: TrainingJobSpec) -> None:
        raise AssertionError("check runs after the driver check")

    def train(env: RuntimeEnv, spec: TrainingJobSpec, checked: None) -> Outcome:
        raise AssertionError("train runs after the driver check")

    assert entry.main("kubetrain.trainer.lora", check, train) == EXIT_PERMANENT
    reason, message = read_permanent(termination_log.read_text())
    assert reason == "ConfigurationError"
    assert "driver 570.172.08" in message and "CUDA 13.2" in message


def test_image_cuda_is_the_locked_runtimes() -> None:
    """The runtime the lock installs (and so the images'), read without importing torch."""
    lock = (ROOT / "hack" / "requirements.lock").read_text()
    pinned = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", lock, re.MULTILINE)
    assert pinned is not None
    assert image_cuda() == f"{pinned[1]}.{pinned[2]}" == "13.2"
    assert minimum_driver("13.2") == "580.65.06"


def test_the_check_imports_no_torch() -> None:
    code = (
        "import sys, kubetrain.trainer.entry as e, kubetrain.trainer.driver as d;"
        "d.image_cuda(); d.read_driver_version(); d.gpus_given();"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("driver", "cuda", "code", "shown"),
    [
        ("535.104.05", "13.2", 78, ["image CUDA:     13.2", "minimum driver: 580.65.06"]),
        (None, "13.2", 78, ["node driver:    none visible"]),
        ("590.44.01", "13.2", 0, ["node driver:    590.44.01"]),
        (None, None, 0, ["image CUDA:     none (CPU build of torch)", "minimum driver: -"]),
    ],
)
def test_the_diagnostic_prints_the_versions_and_exits_like_a_trainer(
    capsys: pytest.CaptureFixture[str],
    driver: str | None,
    cuda: str | None,
    code: int,
    shown: list[str],
) -> None:
    assert main(driver=lambda: driver, cuda=lambda: cuda) == code
    out, err = capsys.readouterr()
    assert all(line in out.splitlines() for line in shown)
    assert err.startswith("ConfigurationError: ") if code else err == ""


def test_the_diagnostic_runs_as_a_module() -> None:
    command = [sys.executable, "-m", "kubetrain.trainer.driver"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode in (0, EXIT_PERMANENT), done.stderr
    assert done.stdout.splitlines()[0] == f"image CUDA:     {image_cuda()}"
