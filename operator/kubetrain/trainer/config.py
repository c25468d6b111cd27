"""The trainer's configuration: the TrainingJob spec from ``KUBETRAIN_CONFIG`` and the Pod's env.

Read and checked before any heavy import, so a bad spec or a missing path fails within a
second with a message that names the field or variable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kubetrain.api import TrainingJobSpec
from kubetrain.api.report import ANNOTATION
from kubetrain.trainer.fences import attempt_from_env
from kubetrain.trainer.runtime import TrainerError

DEFAULT_REPORT_INTERVAL = 5.0


class ConfigError(TrainerError):
    """The spec or the environment is wrong; the message says which field or variable."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun-style job (one process per GPU, one Pod per node)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "localhost"
    master_port: int = 29500
    launched: bool = False
    """True in a process started by a launcher (``LOCAL_RANK`` is set): it trains, never spawns."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def needs_launcher(self) -> bool:
        """Whether this Pod must start one child process per local GPU."""
        return not self.launched and self.nproc_per_node > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Distributed:
        """The operator's variables (``NNODES``, ``NODE_RANK``, ``NPROC_PER_NODE``,
        ``WORLD_SIZE``) or, in a process a launcher started, torchrun's (``RANK``,
        ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)."""
        addr = environ.get("MASTER_ADDR") or "localhost"
        port = _int(environ, "MASTER_PORT", 29500, minimum=1)
        if "LOCAL_RANK" in environ:
            world = _int(environ, "WORLD_SIZE", 1, minimum=1)
            local = _int(environ, "LOCAL_RANK", 0, minimum=0)
            nproc = _int(environ, "LOCAL_WORLD_SIZE", 1, minimum=1)
            rank = _int(environ, "RANK", local, minimum=0)
            if rank >= world or local >= nproc:
                raise ConfigError(
                    f"RANK={rank} / LOCAL_RANK={local} must be below "
                    f"WORLD_SIZE={world} / LOCAL_WORLD_SIZE={nproc}"
                )
            return cls(
                world_size=world,
                rank=rank,
                local_rank=local,
                nproc_per_node=nproc,
                nnodes=max(world // nproc, 1),
                node_rank=rank // nproc,
                master_addr=addr,
                master_port=port,
                launched=True,
            )
        nproc = _int(environ, "NPROC_PER_NODE", 1, minimum=1)
        node_rank = _int(environ, "NODE_RANK", 0, minimum=0)
        world = _int(environ, "WORLD_SIZE", nproc, minimum=1)
        nnodes = _int(environ, "NNODES", max(world // nproc, 1), minimum=1)
        if world != nnodes * nproc:
            raise ConfigError(
                f"WORLD_SIZE={world} must equal NNODES={nnodes} x NPROC_PER_NODE={nproc}"
            )
        if node_rank >= nnodes:
            raise ConfigError(f"NODE_RANK={node_rank} must be below NNODES={nnodes}")
        return cls(
            world_size=world,
            rank=node_rank * nproc,
            nproc_per_node=nproc,
            nnodes=nnodes,
            node_rank=node_rank,
            master_addr=addr,
            master_port=port,
        )


@dataclass(frozen=True)
class RuntimeEnv:
    """Everything the operator passes a trainer besides the spec: paths, identity, resume point."""

    checkpoint_dir: Path
    output_dir: Path
    dataset_path: Path | None = None
    dataset_uri: str | None = None
    output_uri: str = ""
    """spec.output.uri: where rank 0 uploads the model on completion."""
    output_credentials_dir: Path | None = None
    base_model_path: Path | None = None
    """The fetch stage's copy of spec.llm.baseModel, in the cache (KUBETRAIN_BASE_MODEL_PATH)."""
    resume_from: str = ""
    """A checkpoint id, or "" / "latest" for the newest complete checkpoint (if any)."""
    job_name: str = ""
    job_uid: str = ""
    """The TrainingJob's uid when the operator passes it (``KUBETRAIN_JOB_UID``): tells a job
    created again under the same name on a kept volume from the one before."""
    attempt: int = 0
    """The operator's attempt number (``KUBETRAIN_ATTEMPT``, else the Pod name's ``-a<n>``);
    0 outside a Pod. Orders the fences on the checkpoint volume."""
    pod_name: str | None = None
    pod_namespace: str | None = None
    annotation: str = ANNOTATION
    report_interval: float = DEFAULT_REPORT_INTERVAL
    report_url: str = ""
    """The operator's report channel; empty: reports go to the Pod's annotation only."""
    report_ca: str = ""
    report_token_file: Path | None = None
    channel_interval: float = DEFAULT_REPORT_INTERVAL
    """How often reports are pushed on the channel (report_interval applies to annotations)."""
    report_file: Path | None = None
    """Outside a cluster: write each report to this JSON file instead of the Pod annotation."""
    pause_at_step: int | None = None
    """Test hook: after this step, wait (up to a minute) for SIGTERM before going on."""
    distributed: Distributed = Distributed()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RuntimeEnv:
        checkpoint = environ.get("KUBETRAIN_CHECKPOINT_DIR")
        if not checkpoint:
            raise ConfigError("KUBETRAIN_CHECKPOINT_DIR is not set (the checkpoint volume's mount)")
        output = environ.get("KUBETRAIN_OUTPUT_DIR") or str(Path(checkpoint) / "output")
        dataset = environ.get("KUBETRAIN_DATASET_PATH")
        interval = _float(environ, "KUBETRAIN_REPORT_INTERVAL_SECONDS", DEFAULT_REPORT_INTERVAL)
        report_file = environ.get("KUBETRAIN_REPORT_FILE")
        token_file = environ.get("KUBETRAIN_REPORT_TOKEN_FILE")
        channel = _float(environ, "KUBETRAIN_REPORT_CHANNEL_INTERVAL_SECONDS", interval)
        pause = environ.get("KUBETRAIN_PAUSE_AT_STEP")
        resume = (environ.get("RESUME_FROM") or "").strip()
        return cls(
            checkpoint_dir=Path(checkpoint),
            output_dir=Path(output),
            dataset_path=Path(dataset) if dataset else None,
            dataset_uri=environ.get("KUBETRAIN_DATASET_URI") or None,
            output_uri=environ.get("KUBETRAIN_OUTPUT_URI", ""),
            output_credentials_dir=Path(folder)
            if (folder := environ.get("KUBETRAIN_OUTPUT_CREDENTIALS_DIR"))
            else None,
            base_model_path=Path(model)
            if (model := environ.get("KUBETRAIN_BASE_MODEL_PATH"))
            else None,
            resume_from="" if resume == "latest" else resume,
            job_name=environ.get("KUBETRAIN_JOB_NAME", ""),
            job_uid=environ.get("KUBETRAIN_JOB_UID", ""),
            attempt=attempt_from_env(environ),
            pod_name=environ.get("POD_NAME") or None,
            pod_namespace=environ.get("POD_NAMESPACE") or None,
            annotation=environ.get("KUBETRAIN_PROGRESS_ANNOTATION") or ANNOTATION,
            report_interval=interval,
            report_url=environ.get("KUBETRAIN_REPORT_URL", ""),
            report_ca=environ.get("KUBETRAIN_REPORT_CA", ""),
            report_token_file=Path(token_file) if token_file else None,
            channel_interval=channel,
            report_file=Path(report_file) if report_file else None,
            pause_at_step=_int(environ, "KUBETRAIN_PAUSE_AT_STEP", 0, minimum=1) if pause else None,
            distributed=Distributed.from_env(environ),
        )


def load_spec(environ: Mapping[str, str] = os.environ) -> TrainingJobSpec:
    """Parse and validate the spec in ``KUBETRAIN_CONFIG``; errors name the offending field."""
    text = environ.get("KUBETRAIN_CONFIG")
    if not text:
        raise ConfigError("KUBETRAIN_CONFIG is not set (the TrainingJob spec as JSON)")
    return parse_spec(text)


def parse_spec(text: str) -> TrainingJobSpec:
    """Validate a camelCase spec, as the operator renders it, with the API's own models."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"KUBETRAIN_CONFIG is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("KUBETRAIN_CONFIG must be a JSON object (the TrainingJob spec)")
    try:
        return TrainingJobSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["spec", *(str(part) for part in first["loc"])])
        extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        raise ConfigError(f"invalid {where}: {first['msg']}{extra}") from None


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw} must be a finite number >= 0")
    return value
