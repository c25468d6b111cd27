"""The progress report a trainer pushes to the operator, or writes to an annotation on its own Pod.

One module for both sides: the trainer runtime builds a ``ProgressReport`` and serialises
it with ``encode``; the operator reads the annotation back with ``decode``, which treats
it as untrusted input (bounded size, strict types, finite numbers in range) and raises
``ReportError`` with the reason instead of ever passing bad data on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

ANNOTATION = "kubetrain.io/progress"
"""The Pod annotation that carries the JSON report."""

CHANNEL_AUDIENCE = "kubetrain.io/report"
"""The audience of the Pod-bound token a trainer pushes reports to the operator with."""
CHANNEL_PATH = "/v1/reports"
"""Where on the operator's report channel reports are POSTed."""
CHANNEL_TOKEN_DIR = "/var/run/secrets/kubetrain.io/report"
"""Where the trainer's Pod has its report token (a projected serviceAccountToken)."""

MAX_REPORT_BYTES = 32 * 1024
MAX_CHECKPOINTS = 64
FORMAT_VERSION: Literal[1] = 1

EXIT_STOPPED = 143
"""Exit code of a trainer that checkpointed on SIGTERM and stopped: resumable, not a failure."""
EXIT_PERMANENT = 78
"""Exit code of a failure no retry can cure (bad configuration, missing data, access denied).

The job fails at once, without using ``runPolicy.backoffLimit``. The termination message is
``<Reason>: <message>``, the reason one of ``PERMANENT_REASONS``."""
PERMANENT_REASONS = frozenset(
    {"ConfigurationError", "DatasetNotFound", "ModelNotFound", "AccessDenied"}
)


def permanent_message(reason: str, message: str) -> str:
    """The termination message of a permanent failure."""
    return f"{reason}: {message}"


def read_permanent(message: str) -> tuple[str, str]:
    """(reason, message) from a permanent failure's termination message; an unknown or
    missing reason reads as ConfigurationError."""
    head, sep, rest = message.partition(":")
    if sep and head.strip() in PERMANENT_REASONS:
        return head.strip(), rest.strip()
    return "ConfigurationError", message.strip()


_BIG = 1e15
Count = Annotated[int, Field(ge=0, le=10**12)]
Real = Annotated[float, Field(ge=-_BIG, le=_BIG, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, le=_BIG, allow_inf_nan=False)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
TrainerState = Literal["starting", "running", "checkpointing", "stopping", "completed", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class ReportedCheckpoint(_Model):
    """A complete checkpoint on the job's volume, as the trainer wrote it."""

    id: Identifier
    epoch: Count
    step: Count
    loss: Real | None = None
    created_at: datetime
    size_bytes: Count = 0
    path: Annotated[str, Field(max_length=1024)]


class ReportedModel(_Model):
    """Where the trained result is (adapter, weights, ONNX) on the job's volume, and where it
    was published (spec.output)."""

    path: Annotated[str, Field(max_length=1024)]
    format: Annotated[str, Field(max_length=64)] = ""
    uri: Annotated[str, Field(max_length=2048)] = ""
    size_bytes: Count = 0
    digest: Annotated[str, Field(max_length=80)] = ""
    """``sha256:<hex>`` over the files' relative paths and contents."""
    upload_error: Annotated[str, Field(max_length=1024)] = ""


class FetchProgress(_Model):
    """Where the fetch stage is: bytes of every source together."""

    source: Annotated[str, Field(max_length=64)] = ""
    """The source being fetched now (dataset, baseModel, pretrainedWeights)."""
    bytes_done: Count = 0
    bytes_total: Count = 0
    bytes_per_second: NonNegative = 0.0
    files_done: Count = 0
    files_total: Count = 0


class FetchedSource(_Model):
    """A remote source in the cache, ready for the workers."""

    name: Annotated[str, Field(max_length=64)]
    uri: Annotated[str, Field(max_length=2048)]
    revision: Annotated[str, Field(max_length=128)]
    """What version of the source this is (a digest of its listing, an ETag, a hub commit)."""
    path: Annotated[str, Field(max_length=1024)]
    """Where it is, as the workers mount the cache (a directory, or the file of a one-file URI)."""
    size_bytes: Count = 0
    files: Count = 0
    reused: bool = False
    """Already in the cache: nothing was downloaded."""


class ProgressReport(_Model):
    """One snapshot of training progress from rank 0 of a job."""

    version: Literal[1] = FORMAT_VERSION
    time: datetime
    state: TrainerState = "running"
    epoch: Count = 0
    total_epochs: Count = 0
    step: Count = 0
    total_steps: Count = 0
    loss: Real | None = None
    eval_loss: Real | None = None
    learning_rate: NonNegative | None = None
    throughput: NonNegative | None = None
    throughput_unit: Annotated[str, Field(max_length=32)] = "samples/s"
    gpu_memory_bytes: Count | None = None
    metrics: dict[Annotated[str, Field(max_length=63)], Real] = Field(default_factory=dict)
    checkpoints: list[ReportedCheckpoint] = Field(default_factory=list, max_length=MAX_CHECKPOINTS)
    """Every checkpoint kept on the volume, oldest commit first."""
    latest_checkpoint: Identifier | None = None
    """The run's latest checkpoint: the last committed on the timeline being trained (after a
    resume from an older checkpoint, that one or a later commit, never the abandoned
    timeline's). Without it, the last of ``checkpoints``."""
    model: ReportedModel | None = None
    message: Annotated[str, Field(max_length=1024)] = ""
    fetch: FetchProgress | None = None
    """From the fetch stage: how far the download is."""
    fetched: list[FetchedSource] = Field(default_factory=list, max_length=8)
    """From the fetch stage's final report: every source, in the cache."""

    @field_validator("metrics")
    @classmethod
    def _few_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) > 32:
            raise ValueError("at most 32 metrics")
        return value


class ReportError(ValueError):
    """A report the operator must ignore, with the reason in the message."""


TRAIN_LOG = "train-log.jsonl"
"""The per-step metrics (JSON lines) a trainer appends at the root of the checkpoint volume."""
MODEL_MANIFEST = "kubetrain-model.json"
"""The file a published model directory is sealed with, written (and uploaded) last."""


def tree_digest(directory: Path) -> tuple[str, int, list[Path]]:
    """A model directory's ``ReportedModel.digest`` (``sha256:`` over each file's relative
    path and content, in path order, the manifest last), its bytes, and its files in that
    order: the trainer computes it as it publishes, a downloader to check what it got."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == MODEL_MANIFEST)
    total, hasher = 0, hashlib.sha256()
    for path in files:
        hasher.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as data:
            while block := data.read(1 << 20):
                hasher.update(block)
                total += len(block)
    return f"sha256:{hasher.hexdigest()}", total, files


def encode(report: ProgressReport) -> str:
    """Serialise a report for the annotation (camelCase JSON, no nulls)."""
    text = report.model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) > MAX_REPORT_BYTES:
        raise ReportError(f"report is {len(text.encode())} bytes, over {MAX_REPORT_BYTES}")
    return text


def decode(text: str) -> ProgressReport:
    """Parse and validate an annotation value written by a trainer (untrusted)."""
    size = len(text.encode(errors="replace"))
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"report is {size} bytes, over the {MAX_REPORT_BYTES}-byte limit")
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise ReportError(f"report is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ReportError("report must be a JSON object")
    try:
        report = ProgressReport.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "report"
        raise ReportError(f"invalid report field {where}: {first['msg']}") from None
    if report.total_steps and report.step > report.total_steps:
        raise ReportError(f"step {report.step} is past totalSteps {report.total_steps}")
    if report.total_epochs and report.epoch > report.total_epochs:
        raise ReportError(f"epoch {report.epoch} is past totalEpochs {report.total_epochs}")
    return report


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")
