"""The job's per-job metric series (the dashboards' figures), from the planned status."""

from __future__ import annotations

from kubetrain.api.job import TrainingJob
from kubetrain.api.status import Phase, TrainingJobStatus
from kubetrain.operator.metrics import JobSample


def job_sample(job: TrainingJob, status: TrainingJobStatus, gpu_type: str) -> JobSample:
    """The job's per-job series, from the status the reconciler just planned."""
    values: dict[str, float] = {
        "restarts": status.restarts,
        "failures": status.failures,
        "attempt": status.attempt,
    }
    progress, figures, usage = status.progress, status.metrics, status.resource_usage
    if progress is not None:
        counts: tuple[tuple[str, int | None], ...] = (
            ("epoch", progress.current_epoch),
            ("step", progress.current_step),
            ("total_steps", progress.total_steps),
        )
        values |= {name: float(value) for name, value in counts if value is not None}
        if progress.percentage is not None:
            values["progress_ratio"] = progress.percentage / 100
    if figures is not None:
        reals: tuple[tuple[str, float | int | None], ...] = (
            ("loss", figures.current_loss),
            ("best_loss", figures.best_loss),
            ("validation_loss", figures.validation_loss),
            ("learning_rate", figures.learning_rate),
            ("throughput", figures.throughput),
            ("gpu_memory_bytes", figures.gpu_memory_bytes),
        )
        values |= {name: float(value) for name, value in reals if value is not None}
    if usage is not None:
        values["gpu_hours"], values["cost_usd"] = usage.gpu_hours or 0.0, usage.cost_usd or 0.0
    latest = next((c for c in status.checkpoints if c.id == status.latest_checkpoint), None)
    if latest is not None and latest.step is not None:
        values["latest_checkpoint_step"] = float(latest.step)
    held = status.resource_allocation
    running = status.phase in (Phase.RUNNING, Phase.STOPPING)
    gpus = (held.workers or 0) * (held.gpus_per_worker or 0) if held and running else 0
    gpus = gpus if job.spec.uses_gpus() else 0
    values["gpus"] = float(gpus)
    return JobSample(
        namespace=job.metadata.namespace or "",
        job=job.metadata.name or "",
        model_type=job.spec.model_type.value,
        gpu_type=gpu_type,
        phase=str(status.phase) if status.phase else "",
        values=values,
        throughput_unit=(figures.throughput_unit or "") if figures else "",
    )
