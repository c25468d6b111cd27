"""Prometheus metrics of the operator."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("kubetrain_jobs", "TrainingJobs by phase, as last written.", ["phase"])
RECONCILE_SECONDS = Histogram(
    "kubetrain_reconcile_duration_seconds",
    "Time to reconcile one TrainingJob.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STATUS_WRITES = Counter("kubetrain_status_writes_total", "TrainingJob status writes.")
REPORTS = Counter(
    "kubetrain_progress_reports_total", "Progress reports read from Pods.", ["result"]
)
GPU_HOURS = Counter("kubetrain_gpu_hours_total", "GPU hours accrued by all jobs.")
RESTARTS = Counter("kubetrain_restarts_total", "Worker groups restarted after a lost Pod.")
ERRORS = Counter("kubetrain_errors_total", "Reconcile errors.", ["kind"])
WATCH_EVENTS = Counter(
    "kubetrain_watch_events_total",
    "Changes of the operator's children its watches received (selected by the API server).",
    ["kind"],
)
PUSHED_REPORTS = Counter(
    "kubetrain_pushed_reports_total",
    "Progress reports trainers pushed to the report channel, by HTTP status answered.",
    ["code"],
)
TOKEN_REVIEWS = Counter(
    "kubetrain_token_reviews_total", "TokenReviews sent to authenticate trainers' reports."
)
API_REQUESTS = Counter(
    "kubetrain_api_requests_total", "Requests the reconciler sent to the API server.", ["verb"]
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def observe_phase(key: tuple[str, str], phase: str) -> None:
    """Record the phase of one job so the gauge counts each job once."""
    with _lock:
        old = _phases.get(key)
        if old == phase:
            return
        if old is not None:
            JOBS.labels(old or "Unknown").dec()
        _phases[key] = phase
        JOBS.labels(phase or "Unknown").inc()


def forget_job(key: tuple[str, str]) -> None:
    with _lock:
        old = _phases.pop(key, None)
        if old is not None:
            JOBS.labels(old or "Unknown").dec()
