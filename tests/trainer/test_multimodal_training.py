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

from kubetrain.api.report import EXIT_PERMANENT, MODEL_MANIFEST, decode
from kubetrain.trainer.multimodal.model import random_model
from tests.trainer.conftest import (
    Start,
    TrainerRun,
    Workspace,
    assert_completed,
    finished,
    launch,
    resume_repeats,
    starting,
    stop_mid_epoch,
    two_ranks_stop_together_and_resume_exactly,
)
from tests.trainer.tiny_vlm import picture, spec, write_dataset

pytestmark = pytest.mark.timeout(300)

MODULE = "kubetrain.trainer.multimodal"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """40 pictures with a question each (4 held out for validation)."""
    root = tmp_path_factory.mktemp("multimodal")
    return Workspace(model=Path("random://idefics3-tiny"), dataset=write_dataset(root, 40))


@pytest.fixture
def start(pictures: Workspace) -> Iterator[Start]:
    """``launch`` of the multimodal trainer; whatever still runs at the end is killed."""
    yield from starting(pictures, MODULE)


@pytest.fixture(scope="module")
def uninterrupted(
    pictures: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerRun]:
    """One whole single-rank run (merging its adapter), the reference for interrupted runs."""
    directory = tmp_path_factory.mktemp("single") / "uninterrupted"
    yield from finished(
        launch(pictures, directory, spec(), env={"KUBETRAIN_MERGE_ADAPTER": "true"}, module=MODULE)
    )


def test_training_lowers_the_loss_and_publishes_a_model_that_reloads(
    uninterrupted: TrainerRun,
) -> None:
    published = Path(assert_completed(uninterrupted, "peft-lora+merged", loss_drop=0.3))
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
    stop_mid_epoch(start, directory, spec())
    resume_repeats(start, directory, spec(), uninterrupted)


def test_two_ranks_stop_together_and_resume_exactly(start: Any, tmp_path: Path) -> None:
    two_ranks_stop_together_and_resume_exactly(start, spec(), tmp_path)


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
