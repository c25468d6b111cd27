"""The multimodal trainer end to end on CPU with ``random://idefics3-tiny``: it learns, publishes
a model that reloads with the Auto classes, stops on SIGTERM with a checkpoint and resumes
exactly where it left off, on one rank and on two."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, MODEL_MANIFEST, decode
from kubetrain.trainer.checkpoints import MANIFEST
from kubetrain.trainer.multimodal.model import random_model
from tests.trainer.conftest import TrainerRun, Workspace, free_port, launch, stop_all
from tests.trainer.test_lora_training import assert_same_losses
from tests.trainer.tiny_vlm import picture, spec, write_dataset

pytestmark = pytest.mark.timeout(300)

MODULE = "kubetrain.trainer.multimodal"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """40 pictures with a question each (4 held out for validation)."""
    root = tmp_path_factory.mktemp("multimodal")
    return Workspace(model=Path("random://idefics3-tiny"), dataset=write_dataset(root, 40))


@pytest.fixture
def start(pictures: Workspace) -> Iterator[Any]:
    """``launch`` of the multimodal trainer; whatever still runs at the end is killed."""
    started: list[TrainerRun] = []

    def begin(directory: Path, job: dict[str, Any], **options: Any) -> TrainerRun:
        run = launch(pictures, directory, job, module=MODULE, **options)
        started.append(run)
        return run

    yield begin
    stop_all(started)


@pytest.fixture(scope="module")
def uninterrupted(
    pictures: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerRun]:
    """One whole single-rank run (merging its adapter), the reference for interrupted runs."""
    directory = tmp_path_factory.mktemp("single") / "uninterrupted"
    run = launch(
        pictures, directory, spec(), env={"KUBETRAIN_MERGE_ADAPTER": "true"}, module=MODULE
    )
    try:
        assert run.wait() == 0, run.output()
        yield run
    finally:
        stop_all([run])


def test_training_lowers_the_loss_and_publishes_a_model_that_reloads(
    uninterrupted: TrainerRun,
) -> None:
    run = uninterrupted
    losses = [loss for _, loss in sorted(run.step_losses().items())]
    assert len(losses) == 18
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert set(run.eval_losses()) == {9, 18}

    report = decode(json.dumps(run.report()))
    assert report.state == "completed"
    assert (report.step, report.total_steps, report.epoch, report.total_epochs) == (18, 18, 2, 2)
    assert report.model is not None and report.model.format == "peft-lora+merged"
    assert [c.id for c in report.checkpoints] == ["ckpt-00000012", "ckpt-00000016"]
    assert report.throughput and report.throughput > 0
    assert run.message().startswith("completed 18 steps (2.00 epochs)")

    published = Path(report.model.path)
    manifest = json.loads((published / MODEL_MANIFEST).read_text())
    assert (
        manifest["format"] == "peft-lora+merged"
        and "adapter/adapter_config.json" in (manifest["files"])
    )
    adapter = json.loads((published / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and "text_model" in adapter["target_modules"]

    # The merged model and its processor reload with the Auto classes and answer like the
    # random base with the adapter on top; the vision tower was left as it was.
    merged = AutoModelForImageTextToText.from_pretrained(published / "merged").eval()
    processor = AutoProcessor.from_pretrained(published / "merged")
    base = random_model("idefics3-tiny", seed=3)[0]
    vision_before = base.model.vision_model.state_dict()
    adapted = PeftModel.from_pretrained(base, published / "adapter").eval()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[picture("red", "dot")], return_tensors="pt")
    with torch.no_grad():
        expected, actual = adapted(**inputs).logits, merged(**inputs).logits
    assert torch.allclose(expected, actual, atol=1e-4)
    vision_after = merged.model.vision_model.state_dict()
    assert all(torch.equal(vision_before[k], vision_after[k]) for k in vision_before)


def test_sigterm_mid_epoch_checkpoints_and_resume_repeats_the_run_exactly(
    start: Any, uninterrupted: TrainerRun, tmp_path: Path
) -> None:
    directory = tmp_path / "interrupted"
    run = start(directory, spec(), env={"KUBETRAIN_PAUSE_AT_STEP": "6"})
    run.wait_for_step(6)
    run.stop()
    assert run.wait() == EXIT_STOPPED, run.output()
    assert run.message() == "stopped at step 6 after checkpoint ckpt-00000006; resumable"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == ["ckpt-00000004", "ckpt-00000006"]

    resumed = start(directory, spec(), env={"RESUME_FROM": "latest"})
    assert resumed.wait() == 0, resumed.output()
    assert "resuming from checkpoint ckpt-00000006 (step 6)" in resumed.output()
    assert_same_losses(uninterrupted.step_losses(), resumed.step_losses())
    assert_same_losses(uninterrupted.eval_losses(), resumed.eval_losses())


def test_two_ranks_stop_together_and_resume_exactly(start: Any, tmp_path: Path) -> None:
    job = spec()
    reference = start(tmp_path / "torchrun", job, torchrun=2)
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
    run = start(directory, job, env=pod | {"KUBETRAIN_PAUSE_AT_STEP": "3"})
    run.wait_for_step(3)
    run.stop()  # the Pod's PID 1 (the launcher) forwards it to both ranks
    assert run.wait() == EXIT_STOPPED, run.output()
    assert "stopped at step 3 after checkpoint ckpt-00000003" in run.message()
    checkpoint = directory / "ckpt-00000003"
    assert {"rng_state_0.pth", "rng_state_1.pth", MANIFEST} <= {
        p.name for p in checkpoint.iterdir()
    }

    resumed = start(directory, job, env=pod | {"MASTER_PORT": str(free_port())})
    assert resumed.wait() == 0, resumed.output()
    assert_same_losses(reference.step_losses(), resumed.step_losses())
    assert_same_losses(reference.eval_losses(), resumed.eval_losses())


def test_full_fine_tuning_publishes_the_whole_model(start: Any, tmp_path: Path) -> None:
    job = spec(epochs=1)
    job["llm"] = {"baseModel": "random://idefics3-tiny", "strategy": "full", "maxSeqLength": 96}
    run = start(tmp_path / "full", job)
    assert run.wait() == 0, run.output()
    report = decode(json.dumps(run.report()))
    assert report.model is not None and report.model.format == "safetensors"
    model = AutoModelForImageTextToText.from_pretrained(Path(report.model.path) / "model")
    base = random_model("idefics3-tiny", seed=3)[0]
    changed = [
        name
        for name, weight in model.state_dict().items()
        if not torch.equal(weight, base.state_dict()[name])
    ]
    assert any("vision_model" in n for n in changed) and any("text_model" in n for n in changed)
    assert AutoProcessor.from_pretrained(Path(report.model.path) / "model").image_seq_len == 4


def test_bad_data_fails_fast_naming_the_record_and_is_not_retried(
    start: Any, pictures: Workspace, tmp_path: Path
) -> None:
    rows = pictures.dataset.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*rows[:2], rows[2].replace("images/002.png", "gone.png")]))
    (tmp_path / "images").symlink_to(pictures.dataset.parent / "images")
    run = start(tmp_path / "broken", spec(), dataset=broken)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    assert run.message() == (
        f"ConfigurationError: {broken}:3: messages[0].content[0].image: gone.png does not "
        f"exist (looked in {tmp_path})"
    )

    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(rows[:3]))
    run = start(tmp_path / "few", spec(), dataset=few)
    assert run.wait(60) == EXIT_PERMANENT, run.output()
    assert run.message() == (
        f"ConfigurationError: dataset {few} has 3 usable samples; at least 5 are required"
    )
    assert "Traceback" not in run.output()
