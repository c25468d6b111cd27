"""The observed state of a TrainingJob, written only by the operator.

Status models are lenient (unknown fields are ignored, nearly everything is optional) so
that an operator can always read back what an older or newer operator wrote.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from kubetrain.api.base import StatusModel


class Phase(StrEnum):
    """Where a job is in its life; the seeds' cancelled maps to Stopped (resumable)."""

    PENDING = "Pending"
    INITIALIZING = "Initializing"
    QUEUED = "Queued"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        """Whether the job has ended for good (Completed or Failed)."""
        return self in (Phase.COMPLETED, Phase.FAILED)


class ConditionStatus(StrEnum):
    """The status of a condition, as in metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The condition types the operator sets; each is True, False or Unknown."""

    INITIALIZING = "Initializing"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    PUBLISHED = "Published"
    COMPLETED = "Completed"
    FAILED = "Failed"


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

SPEC_ERRORS = frozenset(
    {
        "UnknownGPUType",
        "CheckpointNotFound",
        "InvalidSpec",
        "ConfigurationError",
        "FailedCreatePod",  # e.g. spec.image, spec.env or a security context refused
        "FailedApply",
        "FailedCreateWorkload",
        "InvalidImageName",  # spec.image
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",  # e.g. spec.env naming a Secret that is not there
        "CreateContainerError",
    }
)
"""Failure reasons that a change of spec may cure: re-evaluated at a new generation."""


class Condition(StatusModel):
    """One aspect of the job's state, in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="CamelCase type: Queued, Running, Suspended, Completed or Failed.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=REASON_PATTERN,
        description="Why the condition last changed, as a CamelCase word (e.g. CheckpointSaved).",
    )
    message: str = Field(
        max_length=32_768,
        description="Human-readable detail; for a bad spec it names the field and the rule.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )
    last_transition_time: datetime = Field(
        description="When status last changed from one value to another."
    )


class Progress(StatusModel):
    """How far training has got, mirrored from the trainer's reports."""

    current_epoch: int | None = Field(
        default=None, ge=0, description="Epoch in progress (1-based; 0 before the first)."
    )
    total_epochs: int | None = Field(
        default=None, ge=0, description="Epochs the run will train for."
    )
    current_step: int | None = Field(default=None, ge=0, description="Optimiser steps done so far.")
    total_steps: int | None = Field(
        default=None, ge=0, description="Optimiser steps the run will take."
    )
    percentage: float | None = Field(
        default=None, ge=0, le=100, description="Share of the total steps done, 0 to 100."
    )
    elapsed_seconds: float | None = Field(
        default=None, ge=0, description="Training time so far, excluding time suspended."
    )
    remaining_seconds: float | None = Field(
        default=None, ge=0, description="Estimated training time left."
    )
    last_update_time: datetime | None = Field(
        default=None, description="When the trainer last reported progress."
    )
    attempt: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The attempt whose report this is: within an attempt, progress never goes back "
            "(an older report, e.g. read back after an operator restart, is not applied)."
        ),
    )


class Metrics(StatusModel):
    """The latest training metrics the trainer reported."""

    current_loss: float | None = Field(
        default=None, description="Training loss of the latest step."
    )
    best_loss: float | None = Field(default=None, description="Lowest loss seen so far.")
    validation_loss: float | None = Field(
        default=None, description="Loss on the validation split, after the latest evaluation."
    )
    learning_rate: float | None = Field(
        default=None, ge=0, description="Learning rate of the latest step."
    )
    throughput: float | None = Field(
        default=None, ge=0, description="Training speed across all workers, in throughputUnit."
    )
    throughput_unit: str | None = Field(
        default=None, max_length=32, description="Unit of throughput: tokens/s or samples/s."
    )
    gpu_memory_bytes: int | None = Field(
        default=None, ge=0, description="Peak GPU memory in use on the busiest worker, in bytes."
    )
    evaluation: dict[str, float] | None = Field(
        default=None,
        description="Task-specific evaluation metrics by name, e.g. accuracy, mAP50, perplexity.",
    )


class Checkpoint(StatusModel):
    """A checkpoint on the job's checkpoint volume; resumable by id (spec.resumeFrom)."""

    id: str = Field(
        min_length=1, max_length=253, description="Unique id, e.g. epoch-0002-step-001250."
    )
    epoch: int | None = Field(
        default=None, ge=0, description="Epochs completed when it was written."
    )
    step: int | None = Field(
        default=None, ge=0, description="Optimiser steps completed when it was written."
    )
    loss: float | None = Field(default=None, description="Training loss when it was written.")
    created_at: datetime | None = Field(default=None, description="When it was written.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size on the volume, in bytes.")
    path: str | None = Field(
        default=None, max_length=4096, description="Directory inside the checkpoint volume."
    )


class ResourceAllocation(StatusModel):
    """What the operator asked the cluster for, after resolving the GPU catalogue."""

    gpu_type: str | None = Field(default=None, description="GPU catalogue key (or cpu).")
    gpu_product: str | None = Field(
        default=None, description="GPU product name, e.g. NVIDIA-A100-SXM4-40GB."
    )
    workers: int | None = Field(default=None, ge=0, description="Worker Pods.")
    gpus_per_worker: int | None = Field(default=None, ge=0, description="GPUs per worker Pod.")
    cpu_per_worker: str | None = Field(default=None, description="CPU request per worker.")
    memory_per_worker: str | None = Field(default=None, description="Memory request per worker.")
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the worker Pods."
    )
    summary: str | None = Field(
        default=None,
        description=(
            "GPU type and count for kubectl get: a100x2 (type x workers), or a100:8x4 with "
            "8 GPUs per worker."
        ),
    )


def allocation_summary(gpu_type: str, gpus_per_worker: int, workers: int) -> str:
    """The resourceAllocation.summary column: ``a100x2``, or ``a100:8x4`` with several GPUs each."""
    per_worker = f":{gpus_per_worker}" if gpus_per_worker > 1 else ""
    return f"{gpu_type}{per_worker}x{workers}"


class EstimatedCost(StatusModel):
    """Cost estimate from the GPU catalogue's hourly prices."""

    hourly_usd: float | None = Field(
        default=None, ge=0, description="US dollars per hour for all workers."
    )
    total_usd: float | None = Field(
        default=None,
        ge=0,
        description="US dollars for the whole run, at the current estimate of its length.",
    )


class ResourceUsage(StatusModel):
    """What the job has consumed so far."""

    gpu_hours: float | None = Field(
        default=None, ge=0, description="GPU hours used across all workers (unrounded)."
    )
    cost_usd: float | None = Field(
        default=None, ge=0, description="US dollars spent so far (estimate, unrounded)."
    )
    last_update_time: datetime | None = Field(
        default=None,
        description=(
            "When gpuHours and cost were last brought up to date (it stands still while no "
            "worker runs)."
        ),
    )


class FetchedSource(StatusModel):
    """A remote source in the job's cache, as every attempt reads it."""

    name: str = Field(description="dataset, baseModel or pretrainedWeights.")
    uri: str = Field(max_length=2048, description="Where it came from.")
    revision: str = Field(
        description="The version fetched: a digest of the listing, an ETag, a hub commit."
    )
    path: str = Field(max_length=4096, description="Where the workers read it.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size in bytes.")
    files: int | None = Field(default=None, ge=0, description="Number of files.")
    reused: bool | None = Field(
        default=None, description="Already in the cache: nothing was downloaded."
    )


class Initialization(StatusModel):
    """The fetch stage: remote datasets and models brought into the cache, once per job."""

    state: str = Field(
        default="Fetching", description="Fetching, Complete or Failed.", max_length=32
    )
    attempts: int = Field(default=0, ge=0, description="Fetch Pods started so far.")
    claim_name: str | None = Field(
        default=None,
        description="The shared cache claim the sources are on; unset: the checkpoint volume.",
    )
    source: str | None = Field(default=None, description="The source being fetched now.")
    bytes_done: int | None = Field(default=None, ge=0, description="Bytes fetched so far.")
    bytes_total: int | None = Field(default=None, ge=0, description="Bytes to fetch in all.")
    bytes_per_second: float | None = Field(default=None, ge=0, description="Current rate.")
    percentage: float | None = Field(default=None, ge=0, le=100, description="Share fetched.")
    remaining_seconds: float | None = Field(default=None, ge=0, description="Estimated time left.")
    start_time: datetime | None = Field(default=None, description="When the fetch began.")
    completion_time: datetime | None = Field(default=None, description="When it completed.")
    sources: list[FetchedSource] = Field(
        default_factory=list,
        description="Every source, in the cache (once Complete).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelOutput(StatusModel):
    """Where the trained model (adapter, weights or export) is."""

    claim_name: str | None = Field(default=None, description="PersistentVolumeClaim that holds it.")
    path: str | None = Field(default=None, max_length=4096, description="Path inside that volume.")
    format: str | None = Field(
        default=None, description="What is there, e.g. peft-adapter, safetensors or onnx."
    )
    size_bytes: int | None = Field(default=None, ge=0, description="Size in bytes.")
    uri: str | None = Field(
        default=None, max_length=2048, description="Where it was published (spec.output)."
    )
    digest: str | None = Field(
        default=None, description="sha256 over the published files' paths and contents."
    )


class QueueStatus(StatusModel):
    """Admission through Kueue (a job with the kueue.x-k8s.io/queue-name label)."""

    name: str = Field(max_length=253, description="The LocalQueue, in the job's namespace.")
    cluster_queue: str | None = Field(
        default=None, max_length=253, description="The ClusterQueue whose quota the job uses."
    )
    workload: str | None = Field(
        default=None, max_length=253, description="The job's Workload (kueue.x-k8s.io)."
    )
    admitted: bool = Field(
        default=False, description="Whether Kueue admitted every worker (all or nothing)."
    )
    flavors: dict[str, str] | None = Field(
        default=None, description="The ResourceFlavor of each resource, once admitted."
    )
    position: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Place in the LocalQueue while waiting (0 is next), from Kueue's visibility API."
        ),
    )
    message: str | None = Field(
        default=None,
        max_length=32768,
        description="Kueue's word on the admission, e.g. which quota is short.",
    )
    preemptions: int = Field(
        default=0,
        ge=0,
        description="Times Kueue evicted the job so far (each resumed from a checkpoint).",
    )


class TrainingJobStatus(StatusModel):
    """Observed state of a TrainingJob."""

    phase: Phase | None = Field(
        default=None,
        description=(
            "Pending, Initializing (fetching remote data and models), Queued, Running, "
            "Stopping, Stopped, Completed or Failed."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations of the job's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    progress: Progress | None = Field(
        default=None, description="Epochs, steps, percentage and time."
    )
    metrics: Metrics | None = Field(
        default=None, description="Loss, learning rate, throughput, memory."
    )
    checkpoints: list[Checkpoint] = Field(
        default_factory=list,
        description="Checkpoints on the volume, oldest first.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    latest_checkpoint: str | None = Field(
        default=None, description="Id of the newest checkpoint: where a resume starts by default."
    )
    resource_allocation: ResourceAllocation | None = Field(
        default=None, description="GPU type, workers and per-worker resources requested."
    )
    estimated_cost: EstimatedCost | None = Field(
        default=None, description="Hourly and total cost estimate."
    )
    resource_usage: ResourceUsage | None = Field(
        default=None, description="GPU hours and cost so far."
    )
    start_time: datetime | None = Field(default=None, description="When training first started.")
    completion_time: datetime | None = Field(
        default=None, description="When the job Completed or Failed."
    )
    estimated_completion_time: datetime | None = Field(
        default=None, description="When training is expected to finish."
    )
    restarts: int = Field(
        default=0,
        ge=0,
        description="Worker Pods recreated after preemption, eviction or node loss (not failures).",
    )
    failures: int = Field(
        default=0,
        ge=0,
        description="Trainer failures so far; the job Fails past spec.runPolicy.backoffLimit.",
    )
    attempt: int = Field(
        default=0,
        ge=0,
        description=(
            "Number of the current run of the worker Pods (their kubetrain.io/attempt label): "
            "1 for the first, one more at every resume or restart."
        ),
    )
    resumed_from: str | None = Field(
        default=None,
        description="Checkpoint the current attempt resumed from: an id, or latest.",
    )
    model: ModelOutput | None = Field(default=None, description="Where the trained model is.")
    initialization: Initialization | None = Field(
        default=None,
        description="Remote datasets and models fetched into the cache before training.",
    )
    queue: QueueStatus | None = Field(
        default=None, description="Admission through Kueue, when the job is queued there."
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of ``type_``, if set."""
        return next((c for c in self.conditions if c.type == type_), None)
