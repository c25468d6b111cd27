"""The progress reporter never holds up training: it coalesces, rate-limits and retries
the final report, whatever the API does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubetrain.api.report import ProgressReport, decode
from kubetrain.trainer.reporter import (
    FileSink,
    LogSink,
    PodAnnotationSink,
    Reporter,
    sink_from_env,
)
from tests.polling import eventually


def report(step: int, **fields: Any) -> ProgressReport:
    return ProgressReport(time=datetime.now(UTC), step=step, total_steps=1000, **fields)


class RecordingSink:
    """Remembers what it was sent, and when; can be held (a slow API) or made to fail."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[float, int, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failures = failures

    def send(self, text: str) -> None:
        self.entered.set()
        self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server unavailable")
        payload = json.loads(text)
        self.sent.append((time.monotonic(), payload["step"], payload.get("state", "")))

    def steps(self) -> list[int]:
        return [step for _, step, _ in self.sent]


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    s = RecordingSink()
    yield s
    s.gate.set()  # let a held sender thread finish


def test_reports_submitted_while_a_send_is_in_flight_are_coalesced(sink: RecordingSink) -> None:
    reporter = Reporter(sink, interval=0)
    sink.gate.clear()
    reporter.submit(report(1))
    eventually(sink.entered.is_set, timeout=5, what="the first send")
    for step in range(2, 11):
        reporter.submit(report(step))
    sink.gate.set()
    eventually(lambda: sink.steps() == [1, 10], timeout=5, what="the newest report only")
    assert reporter.coalesced == 8
    assert reporter.close(report(11, state="completed"))
    assert sink.steps() == [1, 10, 11]


def test_at_most_one_report_per_interval_unless_urgent(sink: RecordingSink) -> None:
    reporter = Reporter(sink, interval=0.3)
    reporter.submit(report(1))
    eventually(lambda: sink.steps() == [1], timeout=5, what="the first report")
    reporter.submit(report(2))
    eventually(lambda: sink.steps() == [1, 2], timeout=5, what="the second report")
    assert sink.sent[1][0] - sink.sent[0][0] >= 0.29
    slow = Reporter(sink, interval=3600)
    slow.submit(report(3))
    slow.submit(report(4), urgent=True)
    eventually(lambda: sink.steps()[-1] == 4, timeout=5, what="the urgent report")
    reporter.close()
    slow.close()


def test_a_hanging_api_never_blocks_training(sink: RecordingSink) -> None:
    reporter = Reporter(sink, interval=0)
    sink.gate.clear()  # the API never answers
    reporter.submit(report(1))
    eventually(sink.entered.is_set, timeout=5, what="the hanging send")
    started = time.monotonic()
    for step in range(2, 2002):
        reporter.submit(report(step))
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert reporter.close(report(2002, state="completed"), timeout=0.2) is False
    assert time.monotonic() - started < 2.0


def test_failures_are_absorbed_and_the_final_report_is_retried() -> None:
    sink = RecordingSink(failures=3)
    reporter = Reporter(sink, interval=0, backoff=0.01)
    reporter.submit(report(1))
    eventually(lambda: reporter.failed >= 1, timeout=5, what="the first failure")
    assert reporter.close(report(5, state="completed"), timeout=10)
    assert sink.steps()[-1] == 5 and sink.sent[-1][2] == "completed"
    assert reporter.failed == 3


def test_a_failed_report_is_retried_unless_a_newer_one_replaced_it() -> None:
    sink = RecordingSink(failures=1)
    reporter = Reporter(sink, interval=0, backoff=0.01)
    reporter.submit(report(1))
    eventually(lambda: sink.steps() == [1], timeout=5, what="report 1, retried")
    reporter.close()


def test_the_file_sink_writes_a_report_the_operator_can_decode(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "progress.json"
    reporter = Reporter(FileSink(path), interval=0)
    assert reporter.close(report(7, state="completed", loss=0.25))
    decoded = decode(path.read_text())
    assert (decoded.step, decoded.state, decoded.loss) == (7, "completed", 0.25)


class FakeCore:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def patch_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def test_the_pod_sink_merge_patches_one_annotation() -> None:
    core = FakeCore()
    PodAnnotationSink(core, "team", "job-worker-0", "kubetrain.io/progress").send('{"step":1}')
    ((args, kwargs),) = core.calls
    assert args == (
        "job-worker-0",
        "team",
        {"metadata": {"annotations": {"kubetrain.io/progress": '{"step":1}'}}},
    )
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert kwargs["_request_timeout"]


def test_sink_selection(tmp_path: Path) -> None:
    chosen = sink_from_env(
        pod=None, namespace=None, annotation="a", report_file=tmp_path / "r.json"
    )
    assert isinstance(chosen, FileSink)
    assert isinstance(
        sink_from_env(pod=None, namespace=None, annotation="a", report_file=None), LogSink
    )
    # A Pod without in-cluster credentials (no service host, no token) falls back to the log.
    outside = sink_from_env(pod="p", namespace="n", annotation="a", report_file=None)
    assert isinstance(outside, LogSink)
