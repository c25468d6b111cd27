"""Fixtures for the LoRA trainer's tests: a tiny local model, a JSONL dataset, a runner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.polling import eventually
from tests.trainer.tiny import corpus, records, save_tiny_model, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
MODULE = "kubetrain.trainer.lora"


@dataclass
class Workspace:
    """A tiny model and dataset shared by the tests of a session."""

    model: Path
    dataset: Path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("lora")
    rows = records(40)
    model = save_tiny_model(root / "model", corpus(rows))
    return Workspace(model=model, dataset=write_jsonl(root / "data" / "train.jsonl", rows))


def spec(model: Path, **training: Any) -> dict[str, Any]:
    """A small LoRA spec: 2 epochs of 9 steps on 36 training samples (4 held out)."""
    return {
        "modelType": "llm",
        "dataset": {"pvc": {"claimName": "data"}, "format": "jsonl"},
        "llm": {
            "baseModel": str(model),
            "maxSeqLength": 48,
            "lora": {
                "rank": 8,
                "alpha": 16,
                "dropout": 0.1,
                "targetModules": ["q_proj", "v_proj", "o_proj", "gate_proj"],
            },
        },
        "training": {
            "epochs": 2,
            "batchSize": 4,
            "learningRate": 0.05,
            "seed": 3,
            "warmupSteps": 2,
            "weightDecay": 0.01,
            **training,
        },
        "checkpoint": {"intervalSteps": 4, "keepLast": 2},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TrainerRun:
    """One trainer process (or torchrun / launcher tree) and the files it writes."""

    directory: Path
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def report_file(self) -> Path:
        return self.directory.parent / f"{self.directory.name}.report.json"

    @property
    def termination_log(self) -> Path:
        return self.directory.parent / f"{self.directory.name}.termination"

    def report(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.report_file.read_text()))
        except (OSError, ValueError):
            return None

    def wait_for_step(self, step: int, timeout: float = 120.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            report = self.report()
            if self.process.poll() is not None:
                raise AssertionError(
                    f"trainer exited early ({self.process.returncode}):\n{self.output()}"
                )
            return report if report and report.get("step", 0) >= step else None

        return eventually(reached, timeout=timeout, interval=0.1, what=f"step {step} reported")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 240.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"trainer did not finish within {timeout}s:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def message(self) -> str:
        return self.termination_log.read_text().strip()

    def step_losses(self) -> dict[int, float]:
        return _logged(self.directory, "loss")

    def eval_losses(self) -> dict[int, float]:
        return _logged(self.directory, "eval_loss")


def _logged(directory: Path, key: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for line in (directory / "train-log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            values[int(record["step"])] = float(record[key])
    return values


def launch(
    workspace: Workspace,
    directory: Path,
    job: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    torchrun: int = 0,
    dataset: Path | None = None,
    module: str = MODULE,
) -> TrainerRun:
    """Start ``python -m <module>`` (the LoRA trainer unless told) or it under torchrun, like
    a Pod would."""
    directory.mkdir(parents=True, exist_ok=True)
    run_env = trainer_env(directory, job, dataset or workspace.dataset, env)
    command = [sys.executable, "-m", module]
    if torchrun:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={torchrun}", "-m", module,
        ]  # fmt: skip
    log = directory.parent / f"{directory.name}.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=run_env, stdout=sink, stderr=subprocess.STDOUT)
    return TrainerRun(directory, process, log)


def stop_all(runs: list[TrainerRun]) -> None:
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture
def start_trainer(workspace: Workspace) -> Iterator[Any]:
    """``launch`` bound to the workspace; whatever still runs at the end is killed."""
    started: list[TrainerRun] = []

    def start(directory: Path, job: dict[str, Any], **options: Any) -> TrainerRun:
        run = launch(workspace, directory, job, **options)
        started.append(run)
        return run

    yield start
    stop_all(started)


def trainer_env(
    directory: Path, spec: dict[str, Any], dataset: Path | None, extra: dict[str, str] | None
) -> dict[str, str]:
    """The environment the operator gives a trainer, pointed at local files for a test run."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBETRAIN_", "POD_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    return base | {
        "KUBETRAIN_CONFIG": json.dumps(spec),
        "KUBETRAIN_CHECKPOINT_DIR": str(directory),
        "KUBETRAIN_REPORT_FILE": str(directory.parent / f"{directory.name}.report.json"),
        "KUBETRAIN_TERMINATION_LOG": str(directory.parent / f"{directory.name}.termination"),
        "KUBETRAIN_REPORT_INTERVAL_SECONDS": "0.05",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "operator"),
        **({"KUBETRAIN_DATASET_PATH": str(dataset)} if dataset else {}),
        **(extra or {}),
    }
