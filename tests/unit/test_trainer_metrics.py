"""Throughput, MFU, early stopping and the reports a session builds: pure arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kubetrain.api import TrainingJobSpec
from kubetrain.api.report import ReportedModel, decode, encode
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.early_stop import epoch_values, should_stop_early
from kubetrain.trainer.metrics import ModelShape, ThroughputMeter, mfu, peak_flops
from kubetrain.trainer.reporter import FileSink
from kubetrain.trainer.session import TrainingSession, current_epoch


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("cpu", None),
    ],
)
def test_peak_flops_by_device_name(name: str, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_a_peak_override_wins() -> None:
    assert peak_flops("cpu", 1.5) == 1.5e12


def test_flops_per_token_count_frozen_and_trained_weights_differently() -> None:
    shape = ModelShape(frozen_matmul_params=1000, trained_matmul_params=10, layers=2, hidden=8)
    assert shape.flops_per_token(context=4) == 4 * 1000 + 6 * 10 + 12 * 2 * 8 * 4
    # A 1B-parameter model at 10k tokens/s on one H100: about 6 % MFU with full training.
    full = ModelShape(frozen_matmul_params=0, trained_matmul_params=10**9, layers=16, hidden=2048)
    assert math.isclose(mfu(10_000, full.flops_per_token(0), 989e12, 1), 6e13 / 989e12)


def test_throughput_over_a_window_of_steps() -> None:
    meter = ThroughputMeter(window=2)
    assert meter.tokens_per_second() is None
    meter.add(1.0, 100, 4)
    meter.add(0.5, 100, 4)
    meter.add(0.5, 200, 4)  # the first step falls out of the window
    assert meter.tokens_per_second() == 300.0
    assert meter.samples_per_second() == 8.0
    assert meter.step_seconds == 0.5


def test_epochs_are_counted_from_one() -> None:
    assert [current_epoch(e) for e in (0.0, 0.1, 1.0, 1.0001, 2.5)] == [0, 1, 1, 2, 3]


def test_early_stopping_from_the_log_history() -> None:
    history = [
        {"loss": 3.0, "epoch": 0.5}, {"loss": 2.0, "epoch": 1.0}, {"eval_loss": 2.0, "epoch": 1.0},
        {"loss": 2.2, "epoch": 2.0}, {"eval_loss": 2.1, "epoch": 2.0},
        {"eval_loss": 1.995, "epoch": 3.0},
    ]  # fmt: skip
    assert epoch_values(history, "loss") == [2.5, 2.2]
    assert epoch_values(history, "eval_loss") == [2.0, 2.1, 1.995]
    assert should_stop_early([2.0, 2.1, 1.995], patience=2, min_delta=0.0) is False
    assert should_stop_early([2.0, 2.1, 1.995], patience=2, min_delta=0.01) is True
    assert should_stop_early([2.0], patience=1, min_delta=0.0) is False


def test_a_session_reports_what_the_operator_accepts(tmp_path: Path) -> None:
    spec = TrainingJobSpec.model_validate(
        {
            "modelType": "llm",
            "dataset": {"synthetic": {}},
            "llm": {"baseModel": "random://llama-tiny"},
            "training": {"epochs": 2},
            "checkpoint": {"keepLast": 1},
        }
    )
    env = RuntimeEnv(checkpoint_dir=tmp_path / "ck", output_dir=tmp_path / "ck" / "output")
    report_file = tmp_path / "report.json"
    session = TrainingSession(env, spec, sink=FileSink(report_file))
    assert session.begin() is None
    session.update(total_steps=10, step=4, epoch=0.8, loss=1.5, learning_rate=1e-4)
    session.metrics.update(tokensPerSecond=1234.0, mfu=float("nan"))
    staged = session.store.staging / "checkpoint-4"
    staged.mkdir()
    (staged / "adapter_model.safetensors").write_bytes(b"x" * 10)
    info = session.commit_checkpoint(staged, step=4, epoch=0.8, loss=1.5)
    session.log_record({"step": 4, "loss": 1.5})
    session.update(step=11, epoch=2.4)  # past the end: clamped, never rejected by the operator
    session.finish("completed", "done", ReportedModel(path=str(env.output_dir), format="peft-lora"))

    report = decode(report_file.read_text())
    assert report.state == "completed" and report.message == "done"
    assert (report.step, report.total_steps, report.epoch, report.total_epochs) == (10, 10, 2, 2)
    assert [c.id for c in report.checkpoints] == [info.id] == ["ckpt-00000004"]
    assert report.checkpoints[0].epoch == 1 and report.checkpoints[0].size_bytes == 10
    assert report.metrics["tokensPerSecond"] == 1234.0 and "mfu" not in report.metrics
    assert report.model is not None and report.model.format == "peft-lora"
    assert (env.checkpoint_dir / "train-log.jsonl").read_text() == '{"step":4,"loss":1.5}\n'
    assert encode(report)
