"""The trainer's environment: what a worker reads to find its job, its attempt, its data,
its checkpoints, its peers and the report channel (pure)."""

from __future__ import annotations

import json
from typing import Any

from kubetrain.api.children import service_name, worker_hostname
from kubetrain.api.fetch import CREDENTIALS_MOUNT
from kubetrain.api.job import TrainingJob
from kubetrain.api.report import ANNOTATION, CHANNEL_AUDIENCE, CHANNEL_PATH, CHANNEL_TOKEN_DIR
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.operator.placement import Placement
from kubetrain.operator.settings import Settings

JSON = dict[str, Any]

CHECKPOINT_MOUNT = "/checkpoints"
DATASET_MOUNT = "/data"
OUTPUT_SUBDIR = "output"

FETCHED_ENV = {
    "dataset": "KUBETRAIN_DATASET_PATH",
    "baseModel": "KUBETRAIN_BASE_MODEL_PATH",
    "pretrainedWeights": "KUBETRAIN_PRETRAINED_WEIGHTS",
}
"""Where a worker finds each fetched source: the variable that names its path."""


def field_env(name: str, path: str) -> JSON:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def trainer_config(spec: TrainingJobSpec) -> str:
    """The spec as the trainer reads it from ``KUBETRAIN_CONFIG``: compact camelCase JSON."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for operator_only in ("suspend", "resumeFrom", "runPolicy", "env"):
        data.pop(operator_only, None)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def channel_env(settings: Settings) -> list[JSON]:
    if not settings.report_channel_url:
        return []
    channel = settings.report_channel_interval_seconds
    return [
        {"name": "KUBETRAIN_REPORT_URL", "value": _channel_url(settings.report_channel_url)},
        {"name": "KUBETRAIN_REPORT_CA", "value": settings.report_channel_ca},
        {"name": "KUBETRAIN_REPORT_TOKEN_FILE", "value": f"{CHANNEL_TOKEN_DIR}/token"},
        {"name": "KUBETRAIN_REPORT_CHANNEL_INTERVAL_SECONDS", "value": f"{channel:g}"},
    ]


def channel_volume(settings: Settings) -> tuple[list[JSON], list[JSON]]:
    """The report token's projected volume and mount (none without the channel)."""
    if not settings.report_channel_url:
        return [], []
    token = {"audience": CHANNEL_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
    volume = {"name": "report-token", "projected": {"sources": [{"serviceAccountToken": token}]}}
    return [volume], [{"name": "report-token", "mountPath": CHANNEL_TOKEN_DIR, "readOnly": True}]


def user_env(spec: TrainingJobSpec, env: list[JSON]) -> list[JSON]:
    """``env`` with spec.env laid over it (a user's variable wins)."""
    user = [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env]
    overridden = {u["name"] for u in user}
    return [e for e in env if e["name"] not in overridden] + user


def trainer_env(
    job: TrainingJob,
    index: int,
    resume_from: str,
    placement: Placement,
    settings: Settings,
    *,
    fetched: dict[str, str],
    attempt: int,
) -> list[JSON]:
    spec, name = job.spec, job.metadata.name or ""
    port, report_interval = settings.master_port, settings.report_interval_seconds
    workers, per_node = spec.resources.workers, max(placement.gpus_per_worker, 1)
    env: list[JSON] = [
        {"name": "KUBETRAIN_JOB_NAME", "value": name},
        # The attempt and the job's uid fence the checkpoints: a Pod of a superseded attempt,
        # or of an earlier job of the same name on a kept volume, never commits one that counts.
        {"name": "KUBETRAIN_JOB_UID", "value": job.metadata.uid or ""},
        {"name": "KUBETRAIN_ATTEMPT", "value": str(attempt)},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        {"name": "KUBETRAIN_CONFIG", "value": trainer_config(spec)},
        {"name": "KUBETRAIN_CHECKPOINT_DIR", "value": CHECKPOINT_MOUNT},
        {"name": "KUBETRAIN_OUTPUT_DIR", "value": f"{CHECKPOINT_MOUNT}/{OUTPUT_SUBDIR}"},
        {"name": "KUBETRAIN_PROGRESS_ANNOTATION", "value": ANNOTATION},
        {"name": "KUBETRAIN_REPORT_INTERVAL_SECONDS", "value": f"{report_interval:g}"},
        {"name": "RESUME_FROM", "value": resume_from},
    ]
    env += channel_env(settings)
    dataset = spec.dataset
    if dataset.pvc is not None:
        path = f"{DATASET_MOUNT}/{dataset.pvc.sub_path}" if dataset.pvc.sub_path else DATASET_MOUNT
        env.append({"name": "KUBETRAIN_DATASET_PATH", "value": path})
    elif dataset.uri is not None and "dataset" not in fetched:
        env.append({"name": "KUBETRAIN_DATASET_URI", "value": dataset.uri})
    for source, path in fetched.items():
        env.append({"name": FETCHED_ENV[source], "value": path})
    if spec.output is not None:
        env.append({"name": "KUBETRAIN_OUTPUT_URI", "value": spec.output.uri})
        if spec.output.credentials is not None:
            folder = f"{CREDENTIALS_MOUNT}/output"
            env.append({"name": "KUBETRAIN_OUTPUT_CREDENTIALS_DIR", "value": folder})
    if fetched:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # the fetch stage did the hub's part
    master = f"{worker_hostname(name, 0)}.{service_name(name)}" if workers > 1 else "localhost"
    env += [
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(port)},
        {"name": "NNODES", "value": str(workers)},
        {"name": "NODE_RANK", "value": str(index)},
        {"name": "NPROC_PER_NODE", "value": str(per_node)},
        {"name": "WORLD_SIZE", "value": str(workers * per_node)},
        {"name": "RANK", "value": str(index * per_node)},
    ]
    return user_env(spec, env)


def _channel_url(base: str) -> str:
    return base.rstrip("/") + CHANNEL_PATH
