"""Prometheus metrics of the operator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    JOB_SERIES.forget(key)
    with _lock:
        old = _phases.pop(key, None)
        if old is not None:
            JOBS.labels(old or "Unknown").dec()


# -- per-job series ---------------------------------------------------------------------------

JOB_LABELS = ("namespace", "trainingjob", "model_type", "gpu_type")
"""``trainingjob``, not ``job``: Prometheus keeps ``job`` for the scrape job."""


@dataclass(frozen=True)
class JobSample:
    """One job's latest figures, as the reconciler last planned its status (the values a
    throttled status write has not written yet included)."""

    namespace: str
    job: str
    model_type: str
    gpu_type: str
    phase: str
    values: dict[str, float]
    """Gauge name suffix -> value, only for what the job has (no NaN series)."""
    throughput_unit: str = ""


_GAUGES = {
    "progress_ratio": "Share of the job's steps done, 0 to 1.",
    "epoch": "Epoch in progress.",
    "step": "Optimiser steps done.",
    "total_steps": "Optimiser steps the run will take.",
    "loss": "Latest training loss.",
    "best_loss": "Lowest training loss so far.",
    "validation_loss": "Latest validation loss.",
    "learning_rate": "Current learning rate.",
    "gpu_memory_bytes": "Peak GPU memory of rank 0.",
    "gpu_hours": "GPU hours accrued.",
    "cost_usd": "Cost accrued, in USD at the catalogue's price.",
    "restarts": "Worker groups restarted after a lost worker.",
    "failures": "Trainer failures.",
    "attempt": "Current attempt of the worker group.",
    "gpus": "GPUs the job's workers hold while it runs.",
    "latest_checkpoint_step": "Step of the job's latest checkpoint (a change marks a new one).",
}


class JobSeries(Collector):
    """Per-job gauges, built at scrape time from the latest sample of each job.

    Cardinality is bounded: a job's series go with the job, and at most ``cap`` jobs are
    exported (the rest are counted in ``kubetrain_jobs_not_exported``).
    """

    def __init__(self, cap: int = 2000) -> None:
        self.cap = cap
        self._samples: dict[tuple[str, str], JobSample] = {}
        self._overflow: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def observe(self, key: tuple[str, str], sample: JobSample) -> None:
        with self._lock:
            if key in self._samples or len(self._samples) < self.cap:
                self._samples[key] = sample
            else:
                self._overflow.add(key)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._samples.pop(key, None)
            self._overflow.discard(key)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples, overflow = list(self._samples.values()), len(self._overflow)
        phase = GaugeMetricFamily(
            "kubetrain_job_phase", "1 for the job's current phase.", labels=[*JOB_LABELS, "phase"]
        )
        gauges = {
            name: GaugeMetricFamily(f"kubetrain_job_{name}", text, labels=list(JOB_LABELS))
            for name, text in _GAUGES.items()
        }
        throughput = GaugeMetricFamily(
            "kubetrain_job_throughput",
            "Training throughput, in its unit (tokens/s, images/s, samples/s).",
            labels=[*JOB_LABELS, "unit"],
        )
        for s in samples:
            labels = [s.namespace, s.job, s.model_type, s.gpu_type]
            phase.add_metric([*labels, s.phase or "Unknown"], 1.0)
            for name, value in s.values.items():
                if name == "throughput":
                    throughput.add_metric([*labels, s.throughput_unit or "samples/s"], value)
                elif name in gauges:
                    gauges[name].add_metric(labels, value)
        yield phase
        yield from gauges.values()
        yield throughput
        yield GaugeMetricFamily(
            "kubetrain_jobs_not_exported",
            "Jobs beyond the per-job series cap (metricsMaxJobs), not exported.",
            value=float(overflow),
        )


JOB_SERIES = JobSeries()
REGISTRY.register(JOB_SERIES)
