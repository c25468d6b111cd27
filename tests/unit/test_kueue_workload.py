"""The Workload's PodsReady condition, kept as Kueue's job framework keeps it for its own
jobs: waitForPodsReady evicts an admitted Workload that never reaches PodsReady=True within
its timeout, or does not get back to it within its recovery timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetrain.operator import kueue
from kubetrain.operator.status import PodView

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=3)
STAMP, LATER_STAMP = "2026-11-22T12:00:00Z", "2026-11-22T12:03:00Z"


def worker(index: int, attempt: int = 1, phase: str = "Running", **fields: Any) -> PodView:
    return PodView(
        name=f"j-worker-{index}-a{attempt}",
        uid=f"uid-{index}-{attempt}",
        index=index,
        attempt=attempt,
        phase=phase,
        deleting=fields.pop("deleting", False),
        **fields,
    )


def body(admitted: bool = True, pods_ready: tuple[str, str] | None = None) -> dict[str, Any]:
    """A Workload as Kueue leaves it: admitted or not, with a PodsReady (status, reason)."""
    conditions = [
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved",
         "lastTransitionTime": "2026-11-22T11:00:00Z"},
        {"type": "Admitted", "status": "True" if admitted else "False",
         "reason": "Admitted" if admitted else "NoReservation",
         "lastTransitionTime": "2026-11-22T11:00:00Z"},
    ]  # fmt: skip
    if pods_ready is not None:
        conditions.append(
            {"type": "PodsReady", "status": pods_ready[0], "reason": pods_ready[1],
             "message": "m", "lastTransitionTime": "2026-11-22T11:30:00Z"}
        )  # fmt: skip
    return {
        "metadata": {"name": "trainingjob-j", "uid": "w", "generation": 2},
        "status": {"conditions": conditions},
    }


def pods_ready(wl: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in wl["status"]["conditions"] if c["type"] == "PodsReady")


def test_the_view_reads_the_pods_ready_condition() -> None:
    assert not kueue.view(body()).pods_ready and kueue.view(body()).pods_ready_reason == ""
    wl = kueue.view(body(pods_ready=("True", "Started")))
    assert wl.pods_ready and wl.pods_ready_reason == "Started"
    wl = kueue.view(body(pods_ready=("False", "WaitForRecovery")))
    assert not wl.pods_ready and wl.pods_ready_reason == "WaitForRecovery"


@pytest.mark.parametrize(
    ("pods", "ready"),
    [
        ([worker(0), worker(1)], True),
        ([worker(0), worker(1, phase="Succeeded")], True),  # a finished rank still counts
        ([worker(0), worker(1, phase="Pending")], False),
        ([worker(0)], False),  # one of two
        ([worker(0), worker(0, attempt=2)], False),  # the same rank twice is one
        ([worker(0), worker(1, deleting=True)], False),  # on its way out
        ([worker(0), worker(1, attempt=0)], False),  # another attempt's
        ([worker(0), worker(1), worker(2, phase="Failed")], True),
        ([worker(0), worker(1, phase="Failed")], False),
        ([worker(0), worker(1), PodView("f", "f", 0, 1, "Running", False, stage="fetch")], True),
        ([worker(0), PodView("f", "f", 1, 1, "Running", False, stage="fetch")], False),
    ],
)
def test_the_workers_are_ready_when_every_rank_of_the_attempt_runs(
    pods: list[PodView], ready: bool
) -> None:
    assert kueue.workers_ready(pods, workers=2, attempt=1) is ready


def test_no_workers_are_never_ready() -> None:
    assert not kueue.workers_ready([], workers=0, attempt=1)


@pytest.mark.parametrize(
    ("admitted", "before", "ready", "after"),
    [
        # Not admitted (never, or evicted since): waiting for the start, whatever the pods.
        (False, None, False, (False, "WaitForStart")),
        (False, ("True", "Started"), True, (False, "WaitForStart")),
        # Admitted: started once every worker runs, waiting for the start until then.
        (True, None, False, (False, "WaitForStart")),
        (True, None, True, (True, "Started")),
        (True, ("False", "WaitForStart"), True, (True, "Started")),
        (True, ("True", "Started"), True, (True, "Started")),
        # A worker lost after the start: waiting for recovery (Kueue's recovery timeout).
        (True, ("True", "Started"), False, (False, "WaitForRecovery")),
        (True, ("False", "WaitForRecovery"), False, (False, "WaitForRecovery")),
        (True, ("False", "WaitForRecovery"), True, (True, "Recovered")),
        (True, ("True", "Recovered"), True, (True, "Recovered")),
        (True, ("True", "Recovered"), False, (False, "WaitForRecovery")),
        # Admitted again after an eviction: a new start, not a recovery.
        (True, ("False", "WaitForStart"), False, (False, "WaitForStart")),
        (True, ("False", "PodsReady"), False, (False, "WaitForStart")),  # Kueue's old reason
    ],
)
def test_the_condition_follows_kueues_job_framework(
    admitted: bool, before: tuple[str, str] | None, ready: bool, after: tuple[bool, str]
) -> None:
    wl = kueue.view(body(admitted, before))
    true, reason, message = kueue.pods_ready_condition(wl, ready)
    assert (true, reason) == after and message
    written = kueue.view(kueue.pods_ready(body(admitted, before), ready, NOW))
    assert (written.pods_ready, written.pods_ready_reason) == after
    assert not kueue.pods_ready_changes(written, ready), "written once, then left alone"
    unchanged = before is not None and (before[0] == "True", before[1]) == after
    assert kueue.pods_ready_changes(wl, ready) is not unchanged


def test_the_condition_carries_the_frameworks_message_and_the_generation() -> None:
    written = pods_ready(kueue.pods_ready(body(), True, NOW))
    assert written == {
        "type": "PodsReady",
        "status": "True",
        "reason": "Started",
        "message": "All pods reached readiness and the workload is running",
        "observedGeneration": 2,
        "lastTransitionTime": STAMP,
    }
    waiting = pods_ready(kueue.pods_ready(body(), False, NOW))
    assert waiting["message"] == "Not all pods are ready or succeeded"
    recovering = pods_ready(kueue.pods_ready(body(pods_ready=("True", "Started")), False, NOW))
    assert recovering["message"] == "At least one pod has failed, waiting for recovery"


def test_the_transition_time_moves_only_when_the_status_changes() -> None:
    """Kueue times the recovery timeout from the move to False, and the start from the
    admission: a reason changing within the same status keeps the time."""
    lost = kueue.pods_ready(body(pods_ready=("True", "Started")), False, NOW)
    assert pods_ready(lost)["lastTransitionTime"] == STAMP
    still = kueue.pods_ready(lost, False, LATER)
    assert pods_ready(still)["lastTransitionTime"] == STAMP
    evicted = kueue.pods_ready(body(False, ("False", "WaitForRecovery")), False, LATER)
    assert pods_ready(evicted)["reason"] == "WaitForStart"
    assert pods_ready(evicted)["lastTransitionTime"] == "2026-11-22T11:30:00Z"
    back = kueue.pods_ready(still, True, LATER)
    assert pods_ready(back)["lastTransitionTime"] == LATER_STAMP


def test_only_the_pods_ready_condition_changes() -> None:
    before = body(pods_ready=("True", "Started"))
    after = kueue.pods_ready(before, False, NOW)
    assert [c for c in after["status"]["conditions"] if c["type"] != "PodsReady"] == [
        c for c in before["status"]["conditions"] if c["type"] != "PodsReady"
    ]
    assert after["metadata"] == before["metadata"]
    assert pods_ready(before)["status"] == "True", "the body given is left as it was"


@pytest.mark.parametrize("before", [("True", "Started"), ("False", "WaitForRecovery")])
def test_a_released_workload_waits_for_a_new_start(before: tuple[str, str]) -> None:
    """The release clears the admission, and PodsReady with it (the job framework writes
    False/WaitForStart for a Workload no longer admitted): after the next admission Kueue
    times a new start, not a recovery, and a True left over would hide a stuck start."""
    released = kueue.released(body(pods_ready=before), "Preempted", "preempted", NOW)
    wl = kueue.view(released)
    assert not wl.admitted and (wl.pods_ready, wl.pods_ready_reason) == (False, "WaitForStart")
    assert not kueue.pods_ready_changes(wl, False)
    assert pods_ready(released)["message"] == "Not all pods are ready or succeeded"


def test_a_release_adds_no_pods_ready_condition_where_there_was_none() -> None:
    released = kueue.released(body(), "Preempted", "preempted", NOW)
    assert all(c["type"] != "PodsReady" for c in released["status"]["conditions"])
