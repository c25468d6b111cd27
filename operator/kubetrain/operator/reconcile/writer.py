"""Status writing: the plan's status goes to the API server only when it changed, at once
when the change matters, otherwise at a per-job pace within an operator-wide budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator import metrics
from kubetrain.operator.kube import Cluster
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.settings import Settings

JSON = dict[str, Any]

_SIGNIFICANT = (
    "phase",
    "conditions",
    "attempt",
    "restarts",
    "failures",
    "checkpoints",
    "latest_checkpoint",
    "model",
    "start_time",
    "completion_time",
    "observed_generation",
    "resource_allocation",
)
"""Status fields whose change is written at once; other changes wait for the throttle."""

_CLOCK_DRIVEN = {
    "resourceUsage": None,
    "estimatedCompletionTime": None,
    "progress": ("elapsedSeconds", "remainingSeconds"),
    "estimatedCost": ("totalUSD",),
}
"""Status fields that move with the clock alone, between reports."""


class TokenBucket:
    """``rate`` tokens a second, up to ``rate`` banked: the operator-wide write budget."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self._clock = rate, clock
        self._tokens, self._at = rate, clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


def _clock_only(status: JSON) -> JSON:
    """``status`` without its clock-driven fields: equal before and after means only the
    clock moved."""
    rest = dict(status)
    for name, inner in _CLOCK_DRIVEN.items():
        if inner is None or name not in rest:
            rest.pop(name, None)
        else:
            rest[name] = {k: v for k, v in rest[name].items() if k not in inner}
    return rest


def dump(status: TrainingJobStatus) -> JSON:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusWriter:
    """Writes planned statuses: significant changes at once; progress at most once a
    ``statusIntervalSeconds`` per job, clock-only changes once a ``usageIntervalSeconds``,
    both within ``statusWritesPerSecond`` for the whole operator."""

    def __init__(self, cluster: Cluster, cache: Cache, settings: Settings) -> None:
        self.cluster, self.cache, self.settings = cluster, cache, settings
        self._budget = TokenBucket(settings.status_writes_per_second)
        self._last_write: dict[Key, float] = {}

    def forget(self, key: Key) -> None:
        self._last_write.pop(key, None)

    def due_in(self, key: Key) -> float:
        """Seconds until a progress-only status write of the job is allowed again."""
        since = time.monotonic() - self._last_write.get(key, 0.0)
        return max(0.0, self.settings.status_interval_seconds - since)

    def write(
        self,
        key: Key,
        body: JSON,
        old: TrainingJobStatus,
        new: TrainingJobStatus,
        *,
        force: bool = False,
    ) -> float | None:
        """Write ``new`` if it differs from ``old``; the seconds to wait when throttled."""
        dumped = dump(new)
        if dumped == dump(old):
            return None
        significant = force or any(getattr(new, f) != getattr(old, f) for f in _SIGNIFICANT)
        if not significant:
            since = time.monotonic() - self._last_write.get(key, 0.0)
            interval = (
                self.settings.usage_interval_seconds
                if _clock_only(dumped) == _clock_only(dump(old))
                else self.settings.status_interval_seconds
            )
            if since < interval:
                return interval - since
            if (wait := self._budget.take()) > 0:
                return wait
        written = self.cluster.replace_status(dict(body, status=dumped))
        self.cache.put_job(written)
        self._last_write[key] = time.monotonic()
        metrics.STATUS_WRITES.inc()
        metrics.observe_phase(key, str(new.phase) if new.phase else "")
        _count_changes(old, new)
        return None


def _count_changes(old: TrainingJobStatus, new: TrainingJobStatus) -> None:
    """Feed the operator-wide counters with what this status write adds."""
    before = (old.resource_usage.gpu_hours or 0.0) if old.resource_usage else 0.0
    after = (new.resource_usage.gpu_hours or 0.0) if new.resource_usage else 0.0
    if after > before:
        metrics.GPU_HOURS.inc(after - before)
    if new.restarts > old.restarts:
        metrics.RESTARTS.inc(new.restarts - old.restarts)
    seen = old.progress.last_update_time if old.progress else None
    if new.progress is not None and new.progress.last_update_time != seen:
        metrics.REPORTS.labels("accepted").inc()
