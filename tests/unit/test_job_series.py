"""Per-job series on the operator's metrics port: what a job exports, and their bounds."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetrain.api import TrainingJob
from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator.metrics import JobSeries
from kubetrain.operator.reconcile.samples import job_sample


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
        "resourceAllocation": {"gpuType": "a100", "workers": 2, "gpusPerWorker": 4},
    }
)  # fmt: skip


def scrape(series: JobSeries) -> str:
    registry = CollectorRegistry()
    registry.register(series)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_running_job_exports_its_curves_labelled_by_job_model_and_gpu() -> None:
    series = JobSeries()
    series.observe(("nlp", "llama"), job_sample(job("llama"), RUNNING, "a100"))
    found = samples(scrape(series))
    labels = {"namespace": "nlp", "trainingjob": "llama", "model_type": "llm", "gpu_type": "a100"}
    for name, extra, value in (
        ("kubetrain_job_progress_ratio", {}, 0.25),
        ("kubetrain_job_loss", {}, 1.5),
        ("kubetrain_job_best_loss", {}, 1.25),
        ("kubetrain_job_learning_rate", {}, 2e-4),
        ("kubetrain_job_step", {}, 40.0),
        ("kubetrain_job_cost_usd", {}, 1.5),
        ("kubetrain_job_restarts", {}, 1.0),
        ("kubetrain_job_gpus", {}, 8.0),
        ("kubetrain_job_throughput", {"unit": "tokens/s"}, 1500.0),
        ("kubetrain_job_phase", {"phase": "Running"}, 1.0),
    ):
        key = (name, frozenset((labels | extra).items()))
        assert found.get(key) == value, f"{name}{labels | extra} is {found.get(key)}"
    assert not [k for k in found if k[0] == "kubetrain_job_validation_loss"]  # never reported


def test_a_deleted_jobs_series_go_and_the_cap_bounds_the_rest() -> None:
    series = JobSeries(cap=1000)
    for i in range(1200):
        series.observe(("nlp", f"job-{i}"), job_sample(job(f"job-{i}"), RUNNING, "a100"))
    text = scrape(series)
    assert text.count("kubetrain_job_loss{") == 1000
    assert "kubetrain_jobs_not_exported 200.0" in text
    series.forget(("nlp", "job-0"))
    series.forget(("nlp", "job-1100"))
    text = scrape(series)
    assert 'trainingjob="job-0"' not in text and "kubetrain_jobs_not_exported 199.0" in text
