"""Fixtures for the trainers' tests: a tiny local model, a JSONL dataset, a runner, and the
checks the LoRA and multimodal trainers' tests share."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubetrain.api.report import EXIT_STOPPED, decode
from kubetrain.api.termination import parse_termination
from kubetrain.trainer.checkpoints import MANIFEST
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


Start = Callable[..., TrainerRun]
"""``launch`` bound to a workspace and a trainer: ``start(directory, job, **options)``."""


def starting(workspace: Workspace, module: str = MODULE) -> Iterator[Start]:
    """A ``start`` for a fixture to yield; whatever it started and still runs is then killed."""
    started: list[TrainerRun] = []

    def start(directory: Path, job: dict[str, Any], **options: Any) -> TrainerRun:
        run = launch(workspace, directory, job, module=module, **options)
        started.append(run)
        return run

    yield start
    stop_all(started)


@pytest.fixture
def start_trainer(workspace: Workspace) -> Iterator[Start]:
    """``launch`` of the LoRA trainer bound to the workspace."""
    yield from starting(workspace)


def finished(run: TrainerRun) -> Iterator[TrainerRun]:
    """``run`` once it completed, for a fixture to yield; killed at teardown if still running."""
    try:
        assert run.wait() == 0, run.output()
        yield run
    finally:
        stop_all([run])


def launcher_pod() -> dict[str, str]:
    """The environment of a one-node job's only Pod, whose launcher starts two ranks."""
    return {
        "NPROC_PER_NODE": "2",
        "NNODES": "1",
        "NODE_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }


def assert_same_losses(expected: dict[int, float], actual: dict[int, float]) -> None:
    assert expected.keys() == actual.keys()
    for step, loss in expected.items():
        assert math.isclose(actual[step], loss, rel_tol=1e-5, abs_tol=1e-6), (
            step,
            loss,
            actual[step],
        )


def assert_same_run(expected: TrainerRun, actual: TrainerRun) -> None:
    """The two runs logged the same training and evaluation losses at the same steps."""
    assert_same_losses(expected.step_losses(), actual.step_losses())
    assert_same_losses(expected.eval_losses(), actual.eval_losses())


def assert_completed(run: TrainerRun, model_format: str, *, loss_drop: float) -> str:
    """The uninterrupted run of ``spec`` (2 epochs of 9 steps) lowered the mean loss by
    ``loss_drop``, evaluated each epoch and reported completion; returns the model's path."""
    losses = [loss for _, loss in sorted(run.step_losses().items())]
    assert len(losses) == 18
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - loss_drop, losses
    assert set(run.eval_losses()) == {9, 18}

    report = decode(json.dumps(run.report()))
    assert report.state == "completed"
    assert (report.step, report.total_steps, report.epoch, report.total_epochs) == (18, 18, 2, 2)
    assert report.model is not None and report.model.format == model_format
    assert [c.id for c in report.checkpoints] == ["ckpt-00000012", "ckpt-00000016"]
    assert report.throughput and report.throughput > 0
    done = parse_termination(run.message())  # the kubelet's copy says so, report or not
    assert done is not None and done.message.startswith("completed 18 steps (2.00 epochs)")
    assert (done.step, done.model) == (18, report.model)
    return report.model.path


def stopped_at(
    start: Start, directory: Path, job: dict[str, Any], step: int, env: dict[str, str]
) -> TrainerRun:
    """A run held at ``step`` and sent SIGTERM there: it must exit stopped (resumable)."""
    run = start(directory, job, env=env | {"KUBETRAIN_PAUSE_AT_STEP": str(step)})
    run.wait_for_step(step)
    run.stop()  # in a launcher's Pod, the launcher (PID 1) forwards it to every rank
    assert run.wait() == EXIT_STOPPED, run.output()
    return run


def stop_mid_epoch(start: Start, directory: Path, job: dict[str, Any]) -> None:
    """SIGTERM at step 6 of ``spec``: a checkpoint there, beside the one of step 4."""
    run = stopped_at(start, directory, job, 6, {})
    assert run.message() == "stopped at step 6 after checkpoint ckpt-00000006; resumable"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == ["ckpt-00000004", "ckpt-00000006"]


def resume_repeats(
    start: Start, directory: Path, job: dict[str, Any], reference: TrainerRun
) -> None:
    """Resumed from step 6 (``stop_mid_epoch``), the run logs the reference's losses exactly."""
    resumed = start(directory, job, env={"RESUME_FROM": "latest"})
    assert resumed.wait() == 0, resumed.output()
    assert "resuming from checkpoint ckpt-00000006 (step 6)" in resumed.output()
    assert_same_run(reference, resumed)


def two_ranks_stop_together_and_resume_exactly(
    start: Start, job: dict[str, Any], tmp_path: Path
) -> None:
    """Under torchrun and under the runtime's launcher, two ranks train 36 samples in 10
    steps; SIGTERM at step 3 checkpoints both ranks' RNG states, and the launcher's run then
    resumes to the torchrun run's losses exactly."""
    reference = start(tmp_path / "torchrun", job, torchrun=2)
    assert reference.wait() == 0, reference.output()
    assert len(reference.step_losses()) == 10  # 36 samples / (2 ranks x 4) = 5 steps per epoch

    pod = launcher_pod()
    directory = tmp_path / "launcher"
    run = stopped_at(start, directory, job, 3, pod)
    assert "stopped at step 3 after checkpoint ckpt-00000003" in run.message()
    checkpoint = directory / "ckpt-00000003"
    assert {"rng_state_0.pth", "rng_state_1.pth", MANIFEST} <= {
        p.name for p in checkpoint.iterdir()
    }

    resumed = start(directory, job, env=pod | {"MASTER_PORT": str(free_port())})
    assert resumed.wait() == 0, resumed.output()
    assert_same_run(reference, resumed)


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
