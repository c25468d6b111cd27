"""Operator configuration: defaults, overridden by a config file, then env, then flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetrain.api.catalogue import Catalogue

ENV_PREFIX = "KUBETRAIN_"


class TrainerImages(BaseModel):
    """The trainer container image and entry point for each model type."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    llm: str = "ghcr.io/kubetrain/trainer-lora:0.1.0"
    vision: str = "ghcr.io/kubetrain/trainer-vision:0.1.0"
    multimodal: str = "ghcr.io/kubetrain/trainer-lora:0.1.0"
    llm_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "kubetrain.trainer.lora"]
    )
    vision_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "kubetrain.trainer.vision"]
    )
    multimodal_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "kubetrain.trainer.multimodal"]
    )
    pull_policy: str = "IfNotPresent"


class Settings(BaseModel):
    """Everything the operator is configured with (besides its kubeconfig)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    catalogue: Catalogue = Field(default_factory=Catalogue)
    images: TrainerImages = Field(default_factory=TrainerImages)
    termination_grace_period_seconds: int = Field(
        default=120, ge=1, description="Time a trainer gets to checkpoint after SIGTERM."
    )
    status_interval_seconds: float = Field(
        default=20.0,
        ge=0,
        description=(
            "At most one progress-only status write per job per this (3 a minute by default); "
            "phase, condition, checkpoint and epoch changes are written at once."
        ),
    )
    usage_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "At most one status write per job per this when only clock-driven fields moved "
            "(GPU hours, cost, elapsed time, ETA); decisions always use the exact values."
        ),
    )
    status_writes_per_second: float = Field(
        default=50.0,
        gt=0,
        description=(
            "Budget of throttled (progress and usage) status writes across all jobs; phase, "
            "condition and checkpoint changes are never held back by it."
        ),
    )
    report_interval_seconds: float = Field(
        default=12.0,
        gt=0,
        description=(
            "How often a trainer reports progress (KUBETRAIN_REPORT_INTERVAL_SECONDS); "
            "checkpoints, epoch ends and state changes are reported at once."
        ),
    )
    report_channel_url: str = Field(
        default="",
        description=(
            "Where trainers push their reports (the operator's report Service, e.g. "
            "https://kubetrain-reports.kubetrain-system.svc:8443); empty: reports go to the "
            "Pod's annotation only."
        ),
    )
    report_channel_listen: str = Field(
        default="", description="host:port the operator serves the report channel on."
    )
    report_channel_tls_dir: str = Field(
        default="",
        description="Directory with the channel's tls.crt, tls.key and ca.crt (trainers' CA).",
    )
    report_channel_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often a trainer pushes progress on the channel (no etcd write); on the "
            "annotation fallback it keeps to reportIntervalSeconds."
        ),
    )
    report_channel_secret: str = Field(
        default="",
        description=(
            "The Secret (in the operator's namespace) where the operator keeps the channel's "
            "CA and serving certificate, made and renewed by itself; instead of "
            "reportChannelTlsDir."
        ),
    )
    report_channel_ca: str = Field(
        default="",
        description=(
            "The CA trainers verify the channel with (read from reportChannelTlsDir or "
            "reportChannelSecret)."
        ),
    )
    cache_claim_name: str = Field(
        default="",
        description=(
            "A PersistentVolumeClaim that jobs without spec.cache share as their cache of "
            "fetched datasets and models, in every namespace where a claim of that name exists."
        ),
    )
    fetch_cpu: str = Field(default="1", description="CPU the fetch Pod requests.")
    fetch_memory: str = Field(default="2Gi", description="Memory the fetch Pod requests.")
    resync_seconds: float = Field(
        default=15.0, gt=0, description="How often running jobs are re-evaluated (ETA, cost)."
    )
    lost_node_grace_seconds: int = Field(
        default=120,
        ge=1,
        description=(
            "How long workers on a node that stopped reporting (NotReady or unreachable) stay "
            "before they count as lost and the job restarts elsewhere from its latest checkpoint."
        ),
    )
    transient_error_limit: int = Field(
        default=10,
        ge=1,
        le=100,
        description=(
            "How many times in a row the API server may refuse a job's action for a passing "
            "reason (429, 5xx, an exhausted ResourceQuota) before the job fails with its "
            "answer; retries back off from 1 s (Pods: 5 s) doubling to 2 min (Pods: 5 min). "
            "A refusal for the request's own sake (400, 403, 422) fails the job at once."
        ),
    )
    container_waiting_grace_seconds: int = Field(
        default=300,
        ge=0,
        description=(
            "How long a worker's container may wait to start for a reason that needs a person "
            "(ErrImagePull, ImagePullBackOff, CreateContainerConfigError) before the job fails; "
            "the ContainersWaiting condition carries the kubelet's message from the start."
        ),
    )
    tmp_size_limit: str = Field(
        default="50Gi",
        description=(
            "Size limit of each trainer's /tmp (an emptyDir on the node's disk): a trainer "
            "that fills it is evicted, which counts as a failure, not a disruption."
        ),
    )
    master_port: int = Field(default=29500, ge=1, le=65535)
    default_checkpoint_size: str = "20Gi"
    priority_classes: dict[str, str] = Field(
        default_factory=lambda: {
            "high": "kubetrain-high",
            "normal": "kubetrain-normal",
            "low": "kubetrain-low",
        }
    )
    kueue_enabled: bool = Field(
        default=False,
        description=(
            "Admit jobs through Kueue: a job with the kueue.x-k8s.io/queue-name label (every "
            "job, with kueueDefaultQueue) gets a Workload, and no worker runs before Kueue "
            "admits them all."
        ),
    )
    kueue_default_queue: str = Field(
        default="", description="The LocalQueue of jobs without the queue-name label; empty: none."
    )
    kueue_priority_classes: dict[str, str] = Field(
        default_factory=lambda: {
            "high": "kubetrain-high",
            "normal": "kubetrain-normal",
            "low": "kubetrain-low",
        },
        description="The WorkloadPriorityClass of each spec.priority (Kueue's preemption order).",
    )
    kueue_visibility_url: str = Field(
        default="",
        description=(
            "Kueue's visibility API (queue positions) at this URL; empty: through the API "
            "server (visibility.kueue.x-k8s.io)."
        ),
    )
    replica_selector: str = Field(
        default="",
        description=(
            "Label selector of the operator's own Pods (its Deployment's): a new leader "
            "removes the report channel's label from every other one of them."
        ),
    )
    shutdown_seconds: float = Field(
        default=20.0,
        gt=0,
        description=(
            "After SIGTERM the Lease is released first; every later step of the shutdown "
            "ends within this (keep it under the Pod's terminationGracePeriodSeconds)."
        ),
    )
    lease_seconds: int = Field(
        default=15,
        ge=3,
        description="How long a silent leader keeps the Lease before a standby takes over.",
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    metrics_max_jobs: int = Field(
        default=2000,
        ge=0,
        description="At most this many jobs get per-job series on the metrics port.",
    )
    metrics_address: str = "0.0.0.0"


_STRUCTURED = ("catalogue", "images", "priority_classes", "kueue_priority_classes")


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """KUBETRAIN_STATUS_INTERVAL_SECONDS=5 -> {"status_interval_seconds": "5"}."""
    fields = Settings.model_fields
    found: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields and name not in _STRUCTURED:
                found[name] = value
    return found


def load_settings(
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Build the settings: file (YAML, camelCase keys) < environment < explicit flags."""
    data: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: the operator config must be a mapping")
        data.update(loaded)
    base = Settings.model_validate(data)
    merged = base.model_dump() | _env_overrides(dict(os.environ if environ is None else environ))
    merged |= {k: v for k, v in flags.items() if v is not None}
    settings = Settings.model_validate(merged)
    if settings.report_channel_tls_dir and not settings.report_channel_ca:
        ca = Path(settings.report_channel_tls_dir) / "ca.crt"
        settings = settings.model_copy(update={"report_channel_ca": ca.read_text()})
    return settings
