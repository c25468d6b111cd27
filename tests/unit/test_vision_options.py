"""The vision trainer's checks before torch: options, spec, weights file, dataset size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kubetrain.api import TrainingJobSpec, VisionTask
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.vision.options import WEIGHTS_ENV, VisionOptions, preflight
from kubetrain.trainer.vision.sources import DataError


def spec(**vision: Any) -> TrainingJobSpec:
    dataset = vision.pop("dataset", {"synthetic": {"samples": 10}})
    return TrainingJobSpec.model_validate(
        {
            "modelType": "vision",
            "dataset": dataset,
            "vision": {"task": "detection", "architecture": "fcos", "pretrained": False} | vision,
        }
    )


def env(tmp_path: Path, dataset: Path | None = None) -> RuntimeEnv:
    return RuntimeEnv(checkpoint_dir=tmp_path / "ckpt", output_dir=tmp_path / "out",
                      dataset_path=dataset)  # fmt: skip


def test_options_come_from_the_environment() -> None:
    options = VisionOptions.from_env(
        {"KUBETRAIN_VALIDATION_FRACTION": "0.3", "KUBETRAIN_DATA_WORKERS": "2",
         "KUBETRAIN_OPTIMIZER": "AdamW", WEIGHTS_ENV: "/w/r.pth"}
    )  # fmt: skip
    assert (options.validation_fraction, options.data_workers, options.optimizer) == (
        0.3,
        2,
        "adamw",
    )
    assert options.weights == Path("/w/r.pth")
    assert VisionOptions.from_env({}) == VisionOptions()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KUBETRAIN_VALIDATION_FRACTION": "1"}, "must be in (0, 1)"),
        ({"KUBETRAIN_VALIDATION_FRACTION": "a"}, "is not a number"),
        ({"KUBETRAIN_DATA_WORKERS": "-1"}, "whole number"),
        ({"KUBETRAIN_OPTIMIZER": "lion"}, "must be one of"),
    ],
)
def test_bad_options_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VisionOptions.from_env(environ)


def test_synthetic_plan_has_a_held_out_split_and_default_size(tmp_path: Path) -> None:
    plan = preflight(env(tmp_path), spec(), VisionOptions())
    assert plan.arch.name == "fcos_resnet50_fpn" and plan.size == (640, 640)
    assert (len(plan.train), len(plan.val), plan.num_classes) == (10, 2, 3)
    assert {s.synthetic for s in plan.train}.isdisjoint({s.synthetic for s in plan.val})


def test_pretrained_needs_a_weights_file_and_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=f"no weights file is given: the trainer never downloads, so set {WEIGHTS_ENV}",
    ):
        preflight(env(tmp_path), spec(pretrained=True), VisionOptions())
    weights = tmp_path / "weights"
    weights.mkdir()
    with pytest.raises(ConfigError, match=r"has no fcos_resnet50_fpn\.pth"):
        preflight(env(tmp_path), spec(pretrained=True), VisionOptions(weights=weights))
    (weights / "fcos_resnet50_fpn.pth").write_bytes(b"")
    plan = preflight(env(tmp_path), spec(pretrained=True), VisionOptions(weights=weights))
    assert plan.weights == weights / "fcos_resnet50_fpn.pth"
    plan = preflight(env(tmp_path), spec(pretrained=False), VisionOptions(weights=weights))
    assert plan.weights is None


def test_a_dataset_directory_is_indexed_split_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(6):
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(data / f"c{i % 2}" / f"{i}.png")
    job = spec(task="classification", architecture="resnet18", numClasses=3,
               dataset={"pvc": {"claimName": "d"}})  # fmt: skip
    plan = preflight(env(tmp_path, data), job, VisionOptions())
    assert plan.task is VisionTask.CLASSIFICATION
    assert plan.classes == ["c0", "c1", "class 2"] and plan.num_classes == 3
    assert (len(plan.train), len(plan.val)) == (5, 1)
    (data / "c0" / "0.png").unlink()
    (data / "c1" / "1.png").unlink()
    with pytest.raises(DataError, match="has 4 usable images; at least 5 are required"):
        preflight(env(tmp_path, data), job, VisionOptions())


def test_remote_data_is_read_from_the_fetch_stages_copy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="was not fetched: the operator"):
        preflight(env(tmp_path), spec(dataset={"uri": "s3://b/p"}), VisionOptions())
    with pytest.raises(ConfigError, match="KUBETRAIN_DATASET_PATH is not set"):
        preflight(env(tmp_path), spec(dataset={"pvc": {"claimName": "d"}}), VisionOptions())


def test_only_vision_jobs_are_trained(tmp_path: Path) -> None:
    llm = TrainingJobSpec.model_validate(
        {"modelType": "llm", "dataset": {"synthetic": {}}, "llm": {"baseModel": "x"}}
    )
    with pytest.raises(ConfigError, match="the vision trainer trains modelType vision"):
        preflight(env(tmp_path), llm, VisionOptions())
