"""A trainer killed at any point of a commit leaves a complete checkpoint: the newest commit or
the one before it, never none (above all with keepLast 1, the same step committed again)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kubetrain.trainer.checkpoints import CheckpointInfo, CheckpointStore

OPERATIONS = ("rename", "replace", "link", "unlink", "rmdir")
"""Every change a store makes to names on the volume goes through one of these."""


class Killed(BaseException):
    """The process ended here (a SIGKILL): nothing after it ran."""


@contextmanager
def killed_before(monkeypatch: pytest.MonkeyPatch, change: int) -> Iterator[list[str]]:
    """Stop the work before its ``change``-th filesystem change (0-based), as a kill there
    would; yields the changes made, by name."""
    made: list[str] = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def changed(*args: Any, **kwargs: Any) -> Any:
            if len(made) == change:
                raise Killed(f"killed before {name}{args}")
            made.append(name)
            return real(*args, **kwargs)

        return changed

    with monkeypatch.context() as patch:
        for name in OPERATIONS:
            patch.setattr(os, name, wrap(name, getattr(os, name)))
        yield made


def start_attempt(root: Path, attempt: int, keep_last: int) -> CheckpointStore:
    """What a starting trainer's rank 0 does with the volume before it resumes."""
    store = CheckpointStore(root, keep_last, attempt=attempt)
    store.fence()
    store.clear_staging()
    return store


def commit(store: CheckpointStore, step: int, payload: bytes) -> CheckpointInfo:
    staged = store.staging / f"checkpoint-{step}"
    (staged / "optimizer").mkdir(parents=True)
    (staged / "adapter.safetensors").write_bytes(payload)
    (staged / "optimizer" / "state.pt").write_bytes(payload * 3)
    info = store.commit(staged, step=step, epoch=1, loss=0.5)
    store.prune()  # as the session does after every commit
    return info


def loadable(info: CheckpointInfo) -> bytes:
    """The checkpoint's payload, every file read back in full."""
    payload = (info.path / "adapter.safetensors").read_bytes()
    assert (info.path / "optimizer" / "state.pt").read_bytes() == payload * 3
    return payload


CASES = {
    "the same step again, keepLast 1": (1, 7, 7),
    "the same step again, keepLast 2": (2, 7, 7),
    "the next step, keepLast 1": (1, 7, 8),
}


@pytest.mark.parametrize("case", CASES)
def test_a_kill_between_any_two_filesystem_changes_leaves_a_complete_checkpoint(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_last, before, after = CASES[case]
    change = 0
    while True:  # one run per point: killed before the first change, the second, ... none
        root = tmp_path / f"killed-before-{change}"
        commit(start_attempt(root, 1, keep_last), before, b"old")
        resumed = start_attempt(root, 2, keep_last)  # resumed, then stopped at once
        with killed_before(monkeypatch, change) as made:
            try:
                commit(resumed, after, b"new")
                finished = True
            except Killed:
                finished = False

        latest = start_attempt(root, 3, keep_last).latest()  # the next attempt's resume point
        assert latest is not None, f"no checkpoint left after {made}"
        expected = {(before, b"old"), (after, b"new")}
        assert (latest.step, loadable(latest)) in expected, made
        if finished:
            assert (latest.step, loadable(latest)) == (after, b"new")
            assert sorted(p.name for p in root.glob("ckpt-*"))[-1] == latest.path.name
            break
        change += 1
    assert change >= 3, "a commit that replaces or prunes makes several changes"


def test_a_copy_set_aside_by_a_killed_re_commit_is_resumed_from_then_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(start_attempt(tmp_path, 1, 1), 7, b"old")
    resumed = start_attempt(tmp_path, 2, 1)
    with killed_before(monkeypatch, 1), pytest.raises(Killed):  # after the old copy moved aside
        commit(resumed, 7, b"new")
    (aside,) = tmp_path.glob("ckpt-00000007.replaced-*")

    again = start_attempt(tmp_path, 3, 1)
    latest = again.latest()
    assert latest is not None and latest.id == "ckpt-00000007" and latest.path == aside
    assert loadable(latest) == b"old"

    commit(again, 7, b"newer")
    assert [p.name for p in tmp_path.glob("ckpt-*")] == ["ckpt-00000007"]
    latest = again.latest()
    assert latest is not None and loadable(latest) == b"newer"


def test_start_up_never_deletes_a_committed_checkpoint(tmp_path: Path) -> None:
    first = start_attempt(tmp_path, 1, 1)
    info = commit(first, 7, b"old")
    (first.staging / "checkpoint-8").mkdir()  # killed while staging the next one
    (first.staging / "checkpoint-8" / "adapter.safetensors").write_bytes(b"half")
    shutil.copytree(info.path, tmp_path / ".trash" / "ckpt-00000006-0123abcd")  # mid-delete

    again = start_attempt(tmp_path, 2, 1)
    assert [c.id for c in again.complete()] == ["ckpt-00000007"]
    assert not (tmp_path / ".trash").exists() or not any((tmp_path / ".trash").iterdir())
    assert list(again.staging.iterdir()) == []
