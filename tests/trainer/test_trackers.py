"""spec.training.reportTo: TensorBoard event files that TensorBoard's own reader loads, an
MLflow run on a real tracking server on loopback, and a Weights & Biases run (offline, on the
volume, read back with W&B's own record definitions), each continued across a resume."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from kubetrain.localcluster.ports import free_ports
from kubetrain.trainer.trackers import Trackers
from tests.polling import eventually
from tests.trainer.conftest import Workspace, spec


def steps(trackers: Trackers, first: int, last: int) -> None:
    for step in range(first, last + 1):
        trackers.log({"step": step, "epoch": 0.5, "loss": 3.0 - step / 10, "learning_rate": 1e-3,
                      "note": "ignored", "done": False})  # fmt: skip


def scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_tensorboard_gets_every_numeric_metric_by_step(tmp_path: Path) -> None:
    trackers = Trackers(["tensorboard"], tmp_path, "job", "ns")
    steps(trackers, 1, 3)
    trackers.close()
    assert scalars(tmp_path / "tensorboard", "loss") == [(1, 2.9), (2, 2.8), (3, 2.7)]
    assert {"loss", "learning_rate", "epoch"} <= set(
        EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    )


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1, with a SQLite store in a temporary directory."""
    root = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        eventually(up, timeout=90, what="the MLflow tracking server")
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_mlflow_gets_one_run_per_job_that_a_resume_continues(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow  # noqa: PLC0415

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    first = Trackers(["mlflow"], tmp_path, "llama", "nlp")
    steps(first, 1, 3)
    first.close()
    resumed = Trackers(["mlflow"], tmp_path, "llama", "nlp")  # the next attempt, same volume
    steps(resumed, 4, 5)
    resumed.close()
    client = mlflow.MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("nlp").experiment_id])
    assert run.info.run_name == "llama" and run.data.tags["kubetrain.io/job"] == "llama"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [
        (1, 2.9),
        (2, 2.8),
        (3, 2.7),
        (4, 2.6),
        (5, 2.5),
    ]


def test_without_a_tracking_uri_mlflow_is_skipped_and_training_goes_on(tmp_path: Path) -> None:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    trackers = Trackers(["mlflow"], tmp_path, "llama", "nlp")
    assert trackers.active == []
    steps(trackers, 1, 1)  # nothing to do, nothing raised


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows of a W&B run file: a log of length-prefixed chunks in 32 KiB blocks
    after a 7-byte header, each record a ``wandb_internal_pb2.Record``."""
    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B run file"
    rows, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
        elif kind in (2, 3):
            pending += chunk
    return rows


def test_wandb_gets_one_run_per_job_that_a_resume_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # no W&B server here: the run stays on the volume
    monkeypatch.setenv("WANDB_SILENT", "true")
    first = Trackers(["wandb"], tmp_path, "llama", "nlp")
    assert len(first.active) == 1
    steps(first, 1, 3)
    first.close()
    resumed = Trackers(["wandb"], tmp_path, "llama", "nlp")  # the next attempt, same volume
    steps(resumed, 4, 5)
    resumed.close()
    run_id = (tmp_path / "wandb-run-id").read_text()
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2, "both attempts wrote to the job's one run"
    history = [row for run in runs for row in wandb_history(run)]
    assert [(row["_step"], round(row["loss"], 6)) for row in history] == [
        (1, 2.9), (2, 2.8), (3, 2.7), (4, 2.6), (5, 2.5)
    ]  # fmt: skip
    assert all("note" not in row and "done" not in row for row in history)


def test_without_an_api_key_wandb_is_skipped_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trackers = Trackers(["wandb"], tmp_path, "llama", "nlp")
    assert trackers.active == []
    steps(trackers, 1, 1)


def test_the_lora_trainer_reports_its_steps_to_tensorboard(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    job = spec(workspace.model, reportTo=["tensorboard"])
    run = start_trainer(tmp_path / "run", job)
    assert run.wait() == 0, run.output()
    losses = scalars(tmp_path / "run" / "tensorboard", "loss")
    assert len(losses) == 18 and losses[-1][1] < losses[0][1]  # 2 epochs of 9 steps
