"""Leadership runs on the local monotonic clock: it lapses at the renew deadline by itself."""

from __future__ import annotations

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
