"""Leadership runs on the local monotonic clock: it lapses at the renew deadline by itself."""

from __future__ import annotations

import threading

from kubetrain.operator.leader import Leadership
from tests.clock import Clock


def test_leadership_lapses_at_the_renew_deadline_without_any_renewal_failing() -> None:
    clock = Clock()
    leading = Leadership(renew_deadline=4.0, clock=clock)
    assert not leading.is_set() and not leading.wait(0)
    leading.renewed()
    clock.now += 3.9
    assert leading.is_set() and leading.wait(0)
    clock.now += 0.2  # e.g. the process was paused: no chance to notice anything
    assert leading.held() and not leading.is_set() and not leading.wait(0)
    leading.renewed()
    assert leading.is_set()
    leading.lost()
    assert not leading.held() and not leading.is_set()


class SignallingClock(Clock):
    """A hand-moved clock that says when a given thread has read it."""

    def __init__(self) -> None:
        super().__init__()
        self.reader: int | None = None
        self.read = threading.Event()

    def __call__(self) -> float:
        if threading.get_ident() == self.reader:
            self.read.set()
        return self.now


def test_a_stale_lease_blocks_a_waiter_until_it_is_renewed() -> None:
    """Held but not renewed within the deadline: ``wait`` blocks (it used to return False at
    once, and the reconcile workers looping on it starved the elector of the GIL)."""
    clock = SignallingClock()
    leading = Leadership(renew_deadline=4.0, clock=clock)
    leading.renewed()
    clock.now += 5.0  # held, stale
    answers: list[bool] = []

    def wait() -> None:
        clock.reader = threading.get_ident()
        answers.append(leading.wait(60.0))

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert clock.read.wait(10), "the waiter looked at its leadership"
    leading.renewed()  # what wakes it; nothing else could make it current
    waiter.join(10)
    assert answers == [True]


def test_a_lost_lease_still_times_out_and_a_current_one_returns_at_once() -> None:
    clock = Clock()
    leading = Leadership(renew_deadline=4.0, clock=clock)
    assert not leading.wait(0.01)
    leading.renewed()
    assert leading.wait(60.0)
