""" "Latest" means one thing: the last checkpoint committed on the timeline being trained. The
trainer reports it, and status, the CLI and Events name the same one, never an abandoned
timeline's checkpoint of a higher step."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from kubetrain.api.report import ProgressReport, ReportedCheckpoint, decode
from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator.status import mirror_report
from tests.polling import eventually
from tests.unit.test_checkpoint_fencing import Trainer


def test_after_a_resume_from_an_older_checkpoint_status_names_that_one(tmp_path: Path) -> None:
    volume = tmp_path / "checkpoints"
    first = Trainer(volume, 1, hold_at=10)  # commits ckpt-00000004 and ckpt-00000008
    try:
        first.wait_for_step(10)
    finally:
        first.process.kill()
        first.process.wait()

    resumed = Trainer(volume, 2, hold_at=5, resume_from="ckpt-00000004")
    try:
        resumed.wait_for_step(5)
        report = decode(json.dumps(resumed.report()))
        assert [c.id for c in report.checkpoints] == ["ckpt-00000004", "ckpt-00000008"]
        assert report.latest_checkpoint == "ckpt-00000004"
        status = mirror_report(TrainingJobStatus(), report, "claim")
        assert status.latest_checkpoint == "ckpt-00000004"  # not the abandoned step 8

        resumed.go_on()
        assert resumed.wait() == 0, resumed.output()
    finally:
        if resumed.process.poll() is None:
            resumed.process.kill()
            resumed.process.wait()
    final = decode(json.dumps(eventually(resumed.report, what="the final report")))
    assert final.state == "completed" and final.latest_checkpoint == "ckpt-00000008"
    assert mirror_report(status, final, "claim").latest_checkpoint == "ckpt-00000008"


def checkpoint(step: int) -> ReportedCheckpoint:
    return ReportedCheckpoint(
        id=f"ckpt-{step:08d}", epoch=1, step=step, created_at=datetime(2026, 1, 1, tzinfo=UTC),
        path=f"/checkpoints/ckpt-{step:08d}",
    )  # fmt: skip


def test_a_report_without_latest_checkpoint_means_the_last_listed() -> None:
    """A custom trainer lists its checkpoints oldest commit first, as the runtime does."""
    report = ProgressReport(
        time=datetime(2026, 1, 1, tzinfo=UTC), checkpoints=[checkpoint(100), checkpoint(60)]
    )
    status = mirror_report(TrainingJobStatus(), report, "claim")
    assert status.latest_checkpoint == "ckpt-00000060"
    assert [c.id for c in status.checkpoints] == ["ckpt-00000060", "ckpt-00000100"]  # shown by step
    named = report.model_copy(update={"latest_checkpoint": "ckpt-00000099"})  # not listed
    assert mirror_report(TrainingJobStatus(), named, "claim").latest_checkpoint == "ckpt-00000060"
