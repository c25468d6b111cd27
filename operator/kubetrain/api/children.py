"""How the operator names and labels a job's children: shared by the operator and the SDK.

The SDK finds a job's Pods, claims and Events by these names and labels; the operator
renders them. Changing one is an API change.
"""

from __future__ import annotations

from kubetrain.api.job import TrainingJob

LABEL_JOB = "kubetrain.io/job-name"
LABEL_WORKER = "kubetrain.io/worker-index"
LABEL_ATTEMPT = "kubetrain.io/attempt"
LABEL_STAGE = "kubetrain.io/stage"
"""``fetch`` on the fetch Pod (workers have none)."""
ANNOTATION_RESUME_FROM = "kubetrain.io/resume-from"
ANNOTATION_WORKERS = "kubetrain.io/workers"
"""How many workers the Pod's group was started with (its world): a resize restarts it."""
MANAGED_BY = "kubetrain"


def pod_name(job: str, index: int, attempt: int) -> str:
    """Worker ``index`` of ``attempt``: a new attempt never waits for an old Pod's name."""
    return f"{job}-worker-{index}-a{attempt}"


def fetch_pod_name(job: str, attempt: int) -> str:
    """The fetch Pod of fetch attempt ``attempt``."""
    return f"{job}-fetch-{attempt}"


def worker_hostname(job: str, index: int) -> str:
    """The worker's stable DNS label (``<hostname>.<job>-workers``), the same in every attempt."""
    return f"{job}-worker-{index}"


def service_name(job: str) -> str:
    return f"{job}-workers"


def checkpoint_claim_name(job: TrainingJob) -> str:
    """The PVC that holds the checkpoints: the user's existing claim or ``<job>-checkpoints``."""
    return job.spec.checkpoint.existing_claim_name or f"{job.metadata.name}-checkpoints"


def labels(job: str, component: str) -> dict[str, str]:
    """The labels every child carries; ``kubetrain.io/job-name`` selects a job's children."""
    return {
        "app.kubernetes.io/name": "kubetrain",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_JOB: job,
    }
