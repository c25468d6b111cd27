"""A checkpoint written by a superseded attempt after a newer one started is never resumed
from: each attempt's rank 0 fences the volume, an old attempt's trainer refuses to commit
and stops, and a commit that slipped past its check still does not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetrain.api.report import EXIT_STOPPED
from kubetrain.api.termination import parse_termination
from kubetrain.trainer.checkpoints import CheckpointStore, SupersededError
from tests.polling import eventually
from tests.trainer.handwritten import MODULE, job

ROOT = Path(__file__).resolve().parents[2]


class Trainer:
    """The hand-written trainer as attempt ``attempt``'s worker 0 on the shared volume."""

    def __init__(
        self, volume: Path, attempt: int, hold_at: int | None = None, resume_from: str = "latest"
    ) -> None:
        self.name = f"a{attempt}"
        self.volume = volume
        self.release = volume.parent / f"{self.name}.release"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETRAIN_", "POD_"))}
        env = base | {
            "KUBETRAIN_CONFIG": json.dumps(job(keep_last=3)),
            "KUBETRAIN_CHECKPOINT_DIR": str(volume),
            "KUBETRAIN_REPORT_FILE": str(volume.parent / f"{self.name}.report.json"),
            "KUBETRAIN_REPORT_INTERVAL_SECONDS": "0.05",
            "KUBETRAIN_TERMINATION_LOG": str(volume.parent / f"{self.name}.termination"),
            "POD_NAME": f"fenced-worker-0-a{attempt}",
            "RESUME_FROM": resume_from,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
        }
        if hold_at is not None:
            env |= {
                "HANDWRITTEN_HOLD_AT_STEP": str(hold_at),
                "HANDWRITTEN_HOLD_UNTIL": str(self.release),
            }
        self.log = volume.parent / f"{self.name}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", MODULE], env=env, stdout=sink, stderr=subprocess.STDOUT
            )

    def report(self) -> dict[str, Any]:
        try:
            text = (self.volume.parent / f"{self.name}.report.json").read_text()
            return dict(json.loads(text))
        except (OSError, ValueError):
            return {}

    def step(self) -> int:
        try:
            report: dict[str, Any] = json.loads(
                (self.volume.parent / f"{self.name}.report.json").read_text()
            )
        except (OSError, ValueError):
            return 0
        return int(report.get("step", 0))

    def wait_for_step(self, step: int) -> None:
        eventually(lambda: self.step() >= step, timeout=60, what=f"{self.name} at step {step}")

    def go_on(self) -> None:
        self.release.touch()

    def wait(self) -> int:
        return self.process.wait(timeout=120)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def message(self) -> str:
        return (self.volume.parent / f"{self.name}.termination").read_text().strip()


@pytest.fixture
def trainers() -> Iterator[list[Trainer]]:
    started: list[Trainer] = []
    yield started
    for trainer in started:
        if trainer.process.poll() is None:
            trainer.process.kill()
            trainer.process.wait()


def test_an_old_attempt_still_running_cannot_commit_once_a_new_one_started(
    trainers: list[Trainer], tmp_path: Path
) -> None:
    volume = tmp_path / "checkpoints"
    old = Trainer(volume, 1, hold_at=6)  # its node is cut off after step 6 (ckpt-00000004)
    trainers.append(old)
    old.wait_for_step(6)

    new = Trainer(volume, 2, hold_at=5)  # the operator's attempt 2, on another node
    trainers.append(new)
    new.wait_for_step(5)
    assert "resuming from checkpoint ckpt-00000004 (step 4)" in new.output()

    old.go_on()  # the old node comes back: its trainer reaches step 8's checkpoint
    assert old.wait() == EXIT_STOPPED, old.output()  # resumable, not a failure of the job
    assert old.message().startswith("attempt 1 is superseded: attempt 2 (Pod fenced-worker-0-a2)")
    assert not (volume / "ckpt-00000008").exists()
    assert not any((volume / ".staging" / "attempt-1").iterdir())  # its staged files dropped

    new.go_on()
    assert new.wait() == 0, new.output()
    done = parse_termination(new.message())
    assert done is not None and done.latest_checkpoint == "ckpt-00000008"
    on_volume = CheckpointStore(volume, 3).complete()
    assert [(c.id, c.attempt) for c in on_volume] == [("ckpt-00000004", 1), ("ckpt-00000008", 2)]


def test_an_old_attempt_whose_pod_starts_late_never_trains(
    trainers: list[Trainer], tmp_path: Path
) -> None:
    volume = tmp_path / "checkpoints"
    new = Trainer(volume, 2, hold_at=5)
    trainers.append(new)
    new.wait_for_step(5)
    late = Trainer(volume, 1)
    trainers.append(late)
    assert late.wait() == EXIT_STOPPED, late.output()
    assert late.message().startswith("attempt 1 is superseded: attempt 2")
    assert late.step() == 0
    new.go_on()
    assert new.wait() == 0, new.output()


def test_a_commit_that_slips_past_its_check_as_the_new_attempt_fences_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = CheckpointStore(tmp_path, 3, attempt=1, job="j")
    old.fence()
    old.clear_staging()
    old.commit(stage(old, 4), step=4, epoch=1, loss=None)
    staged = stage(old, 8)

    real_rename, new = os.rename, CheckpointStore(tmp_path, 3, attempt=2, job="j")

    def fenced_meanwhile(src: Any, dst: Any) -> None:
        if Path(src) == staged and new.generation == 0:
            new.fence()  # attempt 2 starts between the old trainer's check and its rename
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fenced_meanwhile)
    old.commit(staged, step=8, epoch=1, loss=None)  # it landed on the volume ...
    monkeypatch.undo()
    assert (tmp_path / "ckpt-00000008").is_dir()

    new.clear_staging()
    latest = new.resolve("")  # ... but attempt 2 resumes from what was there when it fenced
    assert latest is not None and latest.id == "ckpt-00000004"
    assert [c.id for c in new.complete()] == ["ckpt-00000004"]
    new.commit(stage(new, 6), step=6, epoch=1, loss=None)
    new.prune()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000004", "ckpt-00000006"]
    with pytest.raises(SupersededError, match="attempt 1 is superseded: attempt 2"):
        old.commit(stage(old, 12), step=12, epoch=2, loss=None)


def test_a_new_attempt_leaves_another_attempts_staging_alone(tmp_path: Path) -> None:
    old = CheckpointStore(tmp_path, 2, attempt=1)
    old.fence()
    old.clear_staging()
    writing = stage(old, 4)
    new = CheckpointStore(tmp_path, 2, attempt=2)
    new.fence()
    new.clear_staging()
    assert (writing / "adapter.safetensors").read_bytes() == b"weights"
    assert new.staging != old.staging and list(new.staging.iterdir()) == []


def test_a_job_created_again_under_its_name_on_a_kept_volume_starts_over_at_attempt_1(
    tmp_path: Path,
) -> None:
    for attempt in (1, 2, 3):
        CheckpointStore(tmp_path, 2, attempt=attempt, job="j").fence()
    again = CheckpointStore(tmp_path, 2, attempt=1, job="j")
    assert again.fence().generation == 4  # attempt 1 had fenced: this is a new job
    assert CheckpointStore(tmp_path, 2, attempt=1, job="another-job").fence().generation == 5
    with pytest.raises(SupersededError):  # but an attempt that never fenced, older: a late Pod
        CheckpointStore(tmp_path, 2, attempt=0, job="j").fence()


def stage(store: CheckpointStore, step: int) -> Path:
    staged = store.staging / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "adapter.safetensors").write_bytes(b"weights")
    return staged
