"""The LoRA trainer end to end on CPU: it learns, saves a usable adapter, stops on SIGTERM
with a checkpoint and resumes exactly where it left off, on one rank and on two."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from kubetrain.api.report import EXIT_PERMANENT
from kubetrain.trainer.checkpoints import MANIFEST
from tests.trainer.conftest import (
    TrainerRun,
    Workspace,
    assert_completed,
    finished,
    launch,
    resume_repeats,
    spec,
    stop_mid_epoch,
    two_ranks_stop_together_and_resume_exactly,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def uninterrupted(
    workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerRun]:
    """One whole single-rank run, the reference the interrupted runs are held to."""
    directory = tmp_path_factory.mktemp("single") / "uninterrupted"
    yield from finished(launch(workspace, directory, spec(workspace.model)))


def test_training_lowers_the_loss_and_publishes_a_reloadable_adapter(
    workspace: Workspace, uninterrupted: TrainerRun
) -> None:
    published = assert_completed(uninterrupted, "peft-lora", loss_drop=0.05)
    adapter = Path(published) / "adapter"
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
    stop_mid_epoch(start_trainer, directory, spec(workspace.model))

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

    resume_repeats(start_trainer, directory, spec(workspace.model), uninterrupted)


def test_two_ranks_stop_together_and_resume_exactly(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    two_ranks_stop_together_and_resume_exactly(start_trainer, spec(workspace.model), tmp_path)


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
