"""The LoRA trainer end to end on CPU: it learns, saves a usable adapter, stops on SIGTERM
with a checkpoint and resumes exactly where it left off, on one rank and on two."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, decode
from kubetrain.trainer.checkpoints import MANIFEST
from tests.trainer.conftest import TrainerRun, Workspace, free_port, launch, spec, stop_all

pytestmark = pytest.mark.timeout(600)


def assert_same_losses(expected: dict[int, float], actual: dict[int, float]) -> None:
    assert expected.keys() == actual.keys()
    for step, loss in expected.items():
        assert math.isclose(actual[step], loss, rel_tol=1e-5, abs_tol=1e-6), (
            step,
            loss,
            actual[step],
        )


@pytest.fixture(scope="module")
def uninterrupted(
    workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerRun]:
    """One whole single-rank run, the reference the interrupted runs are held to."""
    run = launch(
        workspace, tmp_path_factory.mktemp("single") / "uninterrupted", spec(workspace.model)
    )
    try:
        assert run.wait() == 0, run.output()
        yield run
    finally:
        stop_all([run])


def test_training_lowers_the_loss_and_publishes_a_reloadable_adapter(
    workspace: Workspace, uninterrupted: TrainerRun
) -> None:
    run = uninterrupted
    losses = [loss for _, loss in sorted(run.step_losses().items())]
    assert len(losses) == 18
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    assert set(run.eval_losses()) == {9, 18}

    report = decode(json.dumps(run.report()))
    assert report.state == "completed"
    assert (report.step, report.total_steps, report.epoch, report.total_epochs) == (18, 18, 2, 2)
    assert report.model is not None and report.model.format == "peft-lora"
    assert [c.id for c in report.checkpoints] == ["ckpt-00000012", "ckpt-00000016"]
    assert report.throughput and report.throughput > 0
    assert run.message().startswith("completed 18 steps (2.00 epochs)")

    adapter = Path(report.model.path) / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    base = AutoModelForCausalLM.from_pretrained(workspace.model)
    reloaded = PeftModel.from_pretrained(base, adapter)
    trained = [n for n, p in reloaded.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert trained, "the saved adapter's B matrices are all zero: nothing was trained"


def test_sigterm_mid_epoch_checkpoints_and_resume_repeats_the_run_exactly(
    workspace: Workspace, start_trainer: Any, uninterrupted: TrainerRun, tmp_path: Path
) -> None:
    directory = tmp_path / "interrupted"
    run = start_trainer(directory, spec(workspace.model), env={"KUBETRAIN_PAUSE_AT_STEP": "6"})
    run.wait_for_step(6)
    run.stop()
    assert run.wait() == EXIT_STOPPED, run.output()
    assert run.message() == "stopped at step 6 after checkpoint ckpt-00000006; resumable"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == ["ckpt-00000004", "ckpt-00000006"]

    # A newer checkpoint left half-written (no manifest) and a torn one must be skipped.
    torn = directory / "ckpt-00000008"
    shutil.copytree(directory / "ckpt-00000006", torn)
    manifest = json.loads((torn / MANIFEST).read_text())
    manifest.update(id="ckpt-00000008", step=8, sequence=99)
    (torn / MANIFEST).write_text(json.dumps(manifest))
    (torn / "optimizer.pt").write_bytes(b"truncated")
    half = directory / "ckpt-00000010"
    shutil.copytree(directory / "ckpt-00000006", half)
    (half / MANIFEST).unlink()

    resumed = start_trainer(directory, spec(workspace.model), env={"RESUME_FROM": "latest"})
    assert resumed.wait() == 0, resumed.output()
    assert "resuming from checkpoint ckpt-00000006 (step 6)" in resumed.output()
    assert_same_losses(uninterrupted.step_losses(), resumed.step_losses())
    assert_same_losses(uninterrupted.eval_losses(), resumed.eval_losses())


def test_two_ranks_stop_together_and_resume_exactly(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    job = spec(workspace.model)
    reference = start_trainer(tmp_path / "torchrun", job, torchrun=2)
    assert reference.wait() == 0, reference.output()
    assert len(reference.step_losses()) == 10  # 36 samples / (2 ranks x 4) = 5 steps per epoch

    pod = {
        "NPROC_PER_NODE": "2",
        "NNODES": "1",
        "NODE_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    directory = tmp_path / "launcher"
    run = start_trainer(directory, job, env=pod | {"KUBETRAIN_PAUSE_AT_STEP": "3"})
    run.wait_for_step(3)
    run.stop()  # the Pod's PID 1 (the launcher) forwards it to both ranks
    assert run.wait() == EXIT_STOPPED, run.output()
    assert "stopped at step 3 after checkpoint ckpt-00000003" in run.message()
    checkpoint = directory / "ckpt-00000003"
    assert {"rng_state_0.pth", "rng_state_1.pth", MANIFEST} <= {
        p.name for p in checkpoint.iterdir()
    }

    resumed = start_trainer(directory, job, env=pod | {"MASTER_PORT": str(free_port())})
    assert resumed.wait() == 0, resumed.output()
    assert_same_losses(reference.step_losses(), resumed.step_losses())
    assert_same_losses(reference.eval_losses(), resumed.eval_losses())


def test_too_few_samples_fail_fast_with_a_clear_message(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    data = tmp_path / "small.jsonl"
    data.write_text('{"text": "one"}\n{"text": "two"}\n{"prompt": "3?", "completion": "3"}\n')
    run = start_trainer(tmp_path / "run", spec(workspace.model), dataset=data)
    assert run.wait(60) == EXIT_PERMANENT, run.output()  # fails the job at once
    assert run.message() == (
        f"ConfigurationError: dataset {data} has 3 usable samples; at least 5 are required"
    )
    assert "Traceback" not in run.output()
