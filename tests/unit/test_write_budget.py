"""The status-write budget: what counts as a clock-only change, and the operator-wide bucket."""

from __future__ import annotations

from kubetrain.operator.reconcile.writer import TokenBucket, _clock_only
from tests.clock import Clock


def test_the_bucket_banks_one_second_of_writes_and_refills_at_its_rate() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(4.0, clock)
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == 0.25  # the next token in a quarter of a second
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 100  # an idle minute banks no more than a second's worth
    assert [bucket.take() for _ in range(5)] == [0.0] * 4 + [0.25]


def test_cost_elapsed_time_and_eta_are_clock_only_progress_and_loss_are_not() -> None:
    before = {
        "phase": "Running",
        "progress": {"currentStep": 10, "elapsedSeconds": 100.0, "remainingSeconds": 50.0},
        "resourceUsage": {"costUSD": 1.0, "lastUpdateTime": "2026-12-01T00:00:00Z"},
        "estimatedCost": {"hourlyUSD": 3.0, "totalUSD": 2.0},
        "estimatedCompletionTime": "2026-12-01T01:00:00Z",
    }
    later = {
        "phase": "Running",
        "progress": {"currentStep": 10, "elapsedSeconds": 115.0, "remainingSeconds": 40.0},
        "resourceUsage": {"costUSD": 1.2, "lastUpdateTime": "2026-12-01T00:00:15Z"},
        "estimatedCost": {"hourlyUSD": 3.0, "totalUSD": 2.1},
        "estimatedCompletionTime": "2026-12-01T00:59:50Z",
    }
    assert _clock_only(before) == _clock_only(later)
    reported = {**later, "progress": {**later["progress"], "currentStep": 11}}
    assert _clock_only(before) != _clock_only(reported)
    assert _clock_only(before) != _clock_only({**later, "metrics": {"currentLoss": 1.0}})
