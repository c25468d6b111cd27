"""Checkpoints on the volume: atomic, complete-or-ignored, newest by commit, keep-last-N."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubetrain.trainer.checkpoints import (
    MANIFEST,
    CheckpointNotFoundError,
    CheckpointStore,
    read_checkpoint,
)
from kubetrain.trainer.outputs import MODEL_MANIFEST, publish, published, staging_dir


def stage(store: CheckpointStore, step: int, payload: bytes = b"weights") -> Path:
    staged = store.staging / f"checkpoint-{step}"
    (staged / "sub").mkdir(parents=True)
    (staged / "adapter.safetensors").write_bytes(payload)
    (staged / "sub" / "state.json").write_text(json.dumps({"step": step}))
    return staged


def commit(store: CheckpointStore, step: int, request: str = "") -> str:
    return store.commit(stage(store, step), step=step, epoch=1, loss=0.5, resume_request=request).id


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    s = CheckpointStore(tmp_path, keep_last=3)
    s.clear_staging()
    return s


def test_a_commit_moves_the_staged_directory_into_place_with_a_manifest(
    store: CheckpointStore,
) -> None:
    created = datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    info = store.commit(stage(store, 40), step=40, epoch=2, loss=1.25, now=created)
    assert info.id == "ckpt-00000040" and info.path == store.root / "ckpt-00000040"
    assert not (store.staging / "checkpoint-40").exists()
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest["files"] == {"adapter.safetensors": 7, "sub/state.json": 12}
    assert info.size_bytes == 19 and info.sequence == 1
    reported = info.to_report()
    assert (reported.id, reported.epoch, reported.step, reported.loss) == (
        "ckpt-00000040",
        2,
        40,
        1.25,
    )
    assert reported.created_at == created.replace(microsecond=0)
    assert reported.path == str(info.path)
    assert store.complete() == [info]


def test_half_written_and_damaged_checkpoints_are_skipped(store: CheckpointStore) -> None:
    commit(store, 10)
    good = commit(store, 20)
    half = store.root / "ckpt-00000030"  # written in place by something that died: no manifest
    half.mkdir()
    (half / "adapter.safetensors").write_bytes(b"partial")
    torn = commit(store, 40)
    (store.root / torn / "adapter.safetensors").write_bytes(b"short")  # a file cut off
    garbled = commit(store, 50)
    (store.root / garbled / MANIFEST).write_text('{"id": "ckpt-00000050", "fi')

    assert [c.id for c in store.complete()] == ["ckpt-00000010", good]
    latest = store.latest()
    assert latest is not None and latest.id == good
    assert read_checkpoint(half) is None


def test_newest_means_committed_last_not_the_highest_step(store: CheckpointStore) -> None:
    commit(store, 100)
    commit(store, 50)  # a run resumed from an older checkpoint goes on from there
    latest = store.latest()
    assert latest is not None and latest.id == "ckpt-00000050"


def test_keep_last_removes_the_oldest_complete_ones(store: CheckpointStore) -> None:
    for step in (1, 2, 3, 4, 5):
        commit(store, step)
    assert store.prune() == ["ckpt-00000001", "ckpt-00000002"]
    assert sorted(p.name for p in store.root.glob("ckpt-*")) == [
        "ckpt-00000003",
        "ckpt-00000004",
        "ckpt-00000005",
    ]
    assert store.prune() == []


def test_the_same_step_committed_again_replaces_the_old_one(store: CheckpointStore) -> None:
    commit(store, 7)
    info = store.commit(stage(store, 7, b"newer weights"), step=7, epoch=1, loss=None)
    assert [c.id for c in store.complete()] == ["ckpt-00000007"]
    assert (
        info.sequence == 2 and (info.path / "adapter.safetensors").read_bytes() == b"newer weights"
    )


def test_clear_staging_removes_what_a_crashed_writer_left(store: CheckpointStore) -> None:
    stage(store, 9)
    store.clear_staging()
    assert list(store.staging.iterdir()) == []


def test_resume_requests(store: CheckpointStore) -> None:
    assert store.resolve("") is None  # fresh start
    commit(store, 10)
    commit(store, 20)
    assert (c := store.resolve("")) is not None and c.id == "ckpt-00000020"
    assert (c := store.resolve("ckpt-00000010")) is not None and c.id == "ckpt-00000010"
    # After resuming from ckpt-00000010 and writing a newer checkpoint, a restarted Pod with
    # the same request continues from its own progress instead of going back again.
    commit(store, 12, request="ckpt-00000010")
    assert (c := store.resolve("ckpt-00000010")) is not None and c.id == "ckpt-00000012"
    with pytest.raises(
        CheckpointNotFoundError, match="'ckpt-00000099': it is not a complete checkpoint"
    ):
        store.resolve("ckpt-00000099")


def test_a_model_is_published_atomically_and_found_again(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "leftover").write_text("from an interrupted publication")
    assert published(output) is None
    staged = staging_dir(output)
    (staged / "adapter").mkdir()
    (staged / "adapter" / "adapter_model.safetensors").write_bytes(b"lora")
    model = publish(staged, output, format="peft-lora", summary={"summary": "done"})
    assert (model.path, model.format) == (str(output), "peft-lora")
    assert sorted(os.listdir(output)) == ["adapter", MODEL_MANIFEST]
    found = published(output)
    assert found is not None and found[0] == model and found[1]["summary"] == "done"
    (output / "adapter" / "adapter_model.safetensors").write_bytes(b"corrupted!")
    assert published(output) is None
