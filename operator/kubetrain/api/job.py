"""The whole TrainingJob object: apiVersion, kind, metadata, spec and status."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubetrain.api.base import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    NAME_FORMAT_MESSAGE,
    NAME_LENGTH_MESSAGE,
    NAME_PATTERN,
    Cel,
    CelChecked,
    camel,
    name_problems,
)
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.api.status import TrainingJobStatus

NAME_RULES = (
    Cel(
        rule=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        message=NAME_LENGTH_MESSAGE,
        check=lambda job: job.metadata.name is None or len(job.metadata.name) <= MAX_NAME_LENGTH,
    ),
    Cel(
        rule=f"self.metadata.name.matches('{NAME_PATTERN}')",
        message=NAME_FORMAT_MESSAGE,
        check=lambda job: (
            job.metadata.name is None or re.fullmatch(NAME_PATTERN, job.metadata.name) is not None
        ),
    ),
)
"""Rules on the object root: CEL there may read metadata.name (and nothing else of metadata)."""


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", alias_generator=camel, populate_by_name=True)

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingJob(CelChecked):
    """A TrainingJob as stored by the API server (or written by a user)."""

    model_config = ConfigDict(
        extra="ignore", alias_generator=camel, populate_by_name=True, protected_namespaces=()
    )
    cel_rules = NAME_RULES

    api_version: Literal["kubetrain.io/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)

    def to_manifest(self, *, with_status: bool = False) -> dict[str, Any]:
        """The object as the API expects it: camelCase, enums as strings, unset fields left out."""
        exclude = None if with_status else {"status"}
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)


def validate_name(name: str) -> str:
    """Return ``name`` when it can name a TrainingJob; raise ValueError saying why not."""
    problems = name_problems(name)
    if problems:
        raise ValueError("; ".join(problems))
    return name
