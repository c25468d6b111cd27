"""The report channel's door: a pushed body decoded into a report, or refused with the
reason; and what the door remembers of each Pod, in bounded memory: how many reports it may
still push (a token bucket) and which bad reports it was already warned of.

``PodBuckets`` and ``Warned`` are used from the channel's event loop only, and forget the
Pods used least recently past ``max_pods``: a forgotten Pod starts again with a full bucket
and a clean slate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from kubetrain.api.report import ProgressReport, ReportError, decode


class Pushed(str):
    """A pushed report as the door took it: its text, the model it decoded into, and when
    the operator received it (its own clock, not the trainer's).

    A ``str``, so whatever keeps a report's text keeps a pushed one as it is; the model
    rides along, so nothing decodes the report again."""

    report: ProgressReport
    received_at: datetime

    def __new__(cls, text: str, report: ProgressReport, received_at: datetime) -> Pushed:
        pushed = super().__new__(cls, text)
        pushed.report, pushed.received_at = report, received_at
        return pushed


def receive(body: bytes, now: datetime) -> Pushed:
    """Decode a pushed body (untrusted) as the annotation path does; ReportError names the
    field and the reason (not UTF-8, not JSON, a negative step, NaN, ...)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(f"report is not UTF-8 text: {err.reason} at byte {err.start}") from None
    return Pushed(text, decode(text), now)


class PodBuckets:
    """A token bucket per Pod: ``burst`` reports at once, then ``rate`` a second."""

    def __init__(
        self,
        rate: float = 1.0,
        burst: float = 10.0,
        *,
        max_pods: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_pods, self._clock = rate, burst, max_pods, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, pod: str) -> float:
        """0 when the Pod may push now (a token taken), else the seconds until it may."""
        now = self._clock()
        tokens, at = self._buckets.pop(pod, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[pod] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_pods:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class Warned:
    """The reasons each Pod's bad reports were refused for: a Warning goes out once per
    distinct reason per Pod (its ``per_pod`` latest reasons remembered)."""

    def __init__(self, *, per_pod: int = 16, max_pods: int = 20_000) -> None:
        self.per_pod, self.max_pods = per_pod, max_pods
        self._reasons: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def first(self, pod: str, reason: str) -> bool:
        """Whether ``reason`` is new for ``pod`` (and remember it)."""
        reasons = self._reasons.pop(pod, None) or OrderedDict()
        self._reasons[pod] = reasons
        while len(self._reasons) > self.max_pods:
            self._reasons.popitem(last=False)
        if reason in reasons:
            reasons.move_to_end(reason)
            return False
        reasons[reason] = None
        while len(reasons) > self.per_pod:
            reasons.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._reasons)
