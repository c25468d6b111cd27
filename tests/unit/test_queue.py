"""The operator's work queue: deduplication, delays, one worker per key."""

from __future__ import annotations

from kubetrain.operator.reconcile.queue import WorkQueue


def drain(queue: WorkQueue[str]) -> list[str]:
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_a_key_waits_once_however_often_it_is_added() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert drain(queue) == ["a", "b"]


def test_a_key_added_while_processing_comes_back_once_done_and_not_before() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    queue.add("a")
    assert queue.get(timeout=0) is None  # no second worker for a key in progress
    queue.done("a")
    assert drain(queue) == ["a"]


def test_a_delayed_key_is_handed_out_when_due() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("later", delay=0.05)
    queue.add("now")
    assert queue.get(timeout=0) == "now"
    assert queue.get(timeout=0) is None
    assert queue.get(timeout=30) == "later"  # handed out once due (None: never)


def test_a_closed_queue_hands_out_nothing() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.close()
    assert queue.get(timeout=5) is None


def test_a_key_has_one_delayed_look_the_earliest_asked_for() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for delay in (30.0, 10.0, 60.0, 10.5):
        queue.add("a", delay)
    assert len(queue) == 1
    queue.add("a", 0.01)
    assert len(queue) == 1
    assert queue.get(timeout=5) == "a"
    queue.done("a")
    assert len(queue) == 0  # the later looks were superseded, not kept
    assert queue.get(timeout=0) is None


def test_a_forgotten_key_is_never_handed_out() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("gone", 0.01)
    queue.add("other")
    queue.add("gone-now")
    queue.forget("gone")
    queue.forget("gone-now")
    assert len(queue) == 1
    assert drain(queue) == ["other"]
    assert queue.get(timeout=0.05) is None
