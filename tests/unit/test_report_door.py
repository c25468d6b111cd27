"""The report channel's door: what a pushed body decodes into or why it is refused, and
what it remembers of each Pod (a token bucket, the reasons it warned of) in bounded memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kubetrain.api.report import MAX_REPORT_BYTES, ReportError
from kubetrain.operator.report_door import PodBuckets, Warned, receive

AT = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
GOOD = '{"version": 1, "time": "2026-12-01T10:00:00Z", "step": 3, "totalSteps": 10}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "report is not valid JSON"),
        (b"[1, 2]", "report must be a JSON object"),
        (GOOD.replace('"step": 3', '"step": -1').encode(), "invalid report field step"),
        (GOOD.replace('"step": 3', '"loss": NaN').encode(), "NaN is not a finite number"),
        (GOOD.replace('"step": 3', '"loss": Infinity').encode(), "Infinity is not a finite"),
        (GOOD.replace('"step": 3', '"loss": 1e999').encode(), "invalid report field loss"),
        (GOOD.replace('"step": 3', '"step": 11').encode(), "step 11 is past totalSteps 10"),
        (b'{"version": 1}', "invalid report field time"),
        (b"\xff\xfe{}", "report is not UTF-8 text"),
        (json.dumps({"message": "x" * MAX_REPORT_BYTES}).encode(), "over the 32768-byte limit"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field_and_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ReportError, match=reason):
        receive(body, AT)


def test_a_good_body_is_kept_as_its_text_its_model_and_when_it_came() -> None:
    pushed = receive(GOOD.encode(), AT)
    assert pushed == GOOD and pushed.report.step == 3 and pushed.received_at == AT


def test_a_pod_may_push_a_burst_then_at_the_rate() -> None:
    now = [0.0]
    buckets = PodBuckets(rate=1.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(1.0)  # refused: one a second after the burst
    assert buckets.take("b") == 0.0  # another Pod has its own bucket
    now[0] = 0.5
    assert buckets.take("a") == pytest.approx(0.5)  # a refusal takes no token
    now[0] = 1.0
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    now[0] = 100.0  # a long pause banks no more than the burst
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_the_buckets_forget_the_pods_least_recently_heard_from() -> None:
    buckets = PodBuckets(rate=1.0, burst=1, max_pods=2, clock=lambda: 0.0)
    assert buckets.take("a") == 0.0 and buckets.take("b") == 0.0 and buckets.take("c") == 0.0
    assert len(buckets) == 2
    assert buckets.take("c") > 0 and buckets.take("a") == 0.0  # "a" was forgotten


def test_a_warning_goes_out_once_per_distinct_reason_per_pod_in_bounded_memory() -> None:
    warned = Warned(per_pod=2, max_pods=2)
    assert warned.first("a", "step -1") and not warned.first("a", "step -1")
    assert warned.first("a", "NaN") and warned.first("b", "step -1")  # another Pod's own
    assert not warned.first("a", "step -1")  # remembered: the latest two of "a"
    assert warned.first("a", "not JSON")  # pushes out the least recent, "NaN"
    assert warned.first("a", "NaN")
    warned.first("c", "x")
    assert len(warned) == 2 and warned.first("b", "step -1")  # "b" was forgotten
