"""The fetch stage's contract: what the operator asks of it and where things land.

Before the first attempt of a job whose dataset, base model or pretrained weights are
remote, the operator runs one fetch Pod (``python -m kubetrain.trainer.fetch`` in the
trainer image, CPU only, no GPU held). It reads a ``FetchPlan`` from ``KUBETRAIN_FETCH``,
puts every source into the cache (``cacheDir``, on a PersistentVolumeClaim the workers
mount at the same path), reports progress like a trainer (``ProgressReport.fetch``) and
ends with a report whose ``fetched`` lists each source's revision and path. The operator
records them in ``status.initialization``; every attempt's workers then read the cache
(``KUBETRAIN_DATASET_PATH``, ``KUBETRAIN_BASE_MODEL_PATH``, ``KUBETRAIN_PRETRAINED_WEIGHTS``).

A missing source, a refused credential or a bad URI exits ``EXIT_PERMANENT`` with
``DatasetNotFound`` / ``ModelNotFound`` / ``AccessDenied`` / ``ConfigurationError``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from kubetrain.api.spec import SourceCredentials, TrainingJobSpec

CACHE_MOUNT = "/cache"
"""Where a shared cache claim is mounted (fetch Pod and workers alike)."""
CHECKPOINT_CACHE = "/checkpoints/.cache"
"""The cache when the job has no shared cache claim: on its checkpoint volume."""
CREDENTIALS_MOUNT = "/var/run/secrets/kubetrain.io/sources"
"""Each source's credentials Secret is mounted at ``<this>/<source name>``."""
ENV_PLAN = "KUBETRAIN_FETCH"

CREDENTIAL_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "service-account.json",
)
"""Keys a credentials Secret may hold: S3 (and S3-compatible endpoints), the Hugging Face
Hub, a GCS service account. Their values are read from files, never put in env or logs."""


class SourceKind(StrEnum):
    DATASET = "dataset"
    MODEL = "model"
    WEIGHTS = "weights"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class FetchSource(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$")]
    """dataset, baseModel or pretrainedWeights: how status and errors name it."""
    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    """s3://, gs://, https://, hf://, or a bare Hugging Face Hub id (org/name) for a model."""
    kind: SourceKind
    credentials_dir: str | None = None
    """Where the source's credentials Secret is mounted; None: the environment's defaults."""
    credentials_secret: str | None = None
    """The Secret's name, for messages (AccessDenied names it)."""


class FetchPlan(_Model):
    cache_dir: str
    sources: list[FetchSource] = Field(min_length=1, max_length=8)


LOCAL_MODEL_PREFIXES = ("/", "./", "../", "random://")
"""Base models that are not fetched: a directory on a mounted volume, or built in code."""


def fetch_sources(spec: TrainingJobSpec) -> list[FetchSource]:
    """The job's remote sources, in the order they are fetched; empty: nothing to fetch."""
    found: list[FetchSource] = []

    def add(name: str, uri: str, kind: SourceKind, credentials: SourceCredentials | None) -> None:
        secret = credentials.secret_name if credentials is not None else None
        found.append(
            FetchSource(
                name=name,
                uri=uri,
                kind=kind,
                credentials_dir=f"{CREDENTIALS_MOUNT}/{name}" if secret else None,
                credentials_secret=secret,
            )
        )

    if spec.dataset.uri is not None:
        add("dataset", spec.dataset.uri, SourceKind.DATASET, spec.dataset.credentials)
    if spec.llm is not None and not spec.llm.base_model.startswith(LOCAL_MODEL_PREFIXES):
        add("baseModel", spec.llm.base_model, SourceKind.MODEL, spec.llm.credentials)
    vision = spec.vision
    if vision is not None and vision.pretrained and vision.pretrained_weights is not None:
        add("pretrainedWeights", vision.pretrained_weights, SourceKind.WEIGHTS, vision.credentials)
    return found
