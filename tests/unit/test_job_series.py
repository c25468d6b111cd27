"""Per-job series on the operator's metrics port: what a job exports, and their bounds."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from kubetrain.api import TrainingJob
from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator.metrics import JobSeries
from kubetrain.operator.reconcile.reconciler import job_sample
from kubetrain.operator.settings import Settings


def job(name: str) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "nlp", "uid": "u"},
            "spec": {
                "modelType": "llm",
                "dataset": {"synthetic": {}},
                "llm": {"baseModel": "random://llama-tiny"},
                "resources": {"gpuType": "a100"},
            },
        }
    )


RUNNING = TrainingJobStatus.model_validate(
    {
        "phase": "Running",
        "attempt": 2,
        "restarts": 1,
        "progress": {"currentEpoch": 1, "totalEpochs": 3, "currentStep": 40, "totalSteps": 160,
                     "percentage": 25.0, "lastUpdateTime": datetime.now(UTC).isoformat()},
        "metrics": {"currentLoss": 1.5, "bestLoss": 1.25, "learningRate": 2e-4,
                    "throughput": 1500.0, "throughputUnit": "tokens/s"},
        "resourceUsage": {"gpuHours": 0.5, "costUSD": 1.5},
    }
)  # fmt: skip


def scrape(series: JobSeries) -> str:
    registry = CollectorRegistry()
    registry.register(series)
    return generate_latest(registry).decode()


def test_a_running_job_exports_its_curves_labelled_by_job_model_and_gpu() -> None:
    series = JobSeries()
    series.observe(("nlp", "llama"), job_sample(job("llama"), RUNNING, Settings()))
    text = scrape(series)
    labels = 'gpu_type="a100",job="llama",model_type="llm",namespace="nlp"'
    for line in (
        f"kubetrain_job_progress_ratio{{{labels}}} 0.25",
        f"kubetrain_job_loss{{{labels}}} 1.5",
        f"kubetrain_job_best_loss{{{labels}}} 1.25",
        f"kubetrain_job_learning_rate{{{labels}}} 0.0002",
        f"kubetrain_job_step{{{labels}}} 40.0",
        f"kubetrain_job_cost_usd{{{labels}}} 1.5",
        f"kubetrain_job_restarts{{{labels}}} 1.0",
        f'kubetrain_job_throughput{{{labels},unit="tokens/s"}} 1500.0',
        f'kubetrain_job_phase{{{labels},phase="Running"}} 1.0',
    ):
        assert line in text, f"{line} missing from\n{text}"
    assert "kubetrain_job_validation_loss{" not in text  # nothing reported: no series


def test_a_deleted_jobs_series_go_and_the_cap_bounds_the_rest() -> None:
    series = JobSeries(cap=1000)
    for i in range(1200):
        series.observe(("nlp", f"job-{i}"), job_sample(job(f"job-{i}"), RUNNING, Settings()))
    text = scrape(series)
    assert text.count("kubetrain_job_loss{") == 1000
    assert "kubetrain_jobs_not_exported 200.0" in text
    series.forget(("nlp", "job-0"))
    series.forget(("nlp", "job-1100"))
    text = scrape(series)
    assert 'job="job-0"' not in text and "kubetrain_jobs_not_exported 199.0" in text
