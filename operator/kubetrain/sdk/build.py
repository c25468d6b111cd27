"""Building and checking TrainingJob manifests on the client; pure, no I/O.

Every object the SDK sends is first validated with the same pydantic models the CRD is
generated from, so most mistakes are reported (with the field) before a request is made,
and snake_case keys are turned into the camelCase the API server expects instead of
being silently pruned by it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from kubetrain.api import (
    API_VERSION,
    KIND,
    DatasetSource,
    ModelType,
    Priority,
    TrainingJob,
)
from kubetrain.sdk.errors import KubetrainError, from_pydantic

GENERATE_NAME = "tj-"
"""Prefix of the names the API server generates for jobs created without one."""

Section = pydantic.BaseModel | Mapping[str, Any]


def section(value: Section | None) -> dict[str, Any] | None:
    """A spec section as a plain dict: models dumped by alias, mappings copied as given."""
    if value is None:
        return None
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return copy.deepcopy(dict(value))


def dataset_section(dataset: DatasetSource | Mapping[str, Any] | str) -> dict[str, Any]:
    """``spec.dataset``; a string is a URI (``s3://``, ``gs://``, ``https://``, ``hf://``)."""
    if isinstance(dataset, str):
        return {"uri": dataset}
    found = section(dataset)
    assert found is not None
    return found


def job_manifest(
    *,
    name: str | None,
    namespace: str,
    model_type: ModelType | str,
    dataset: DatasetSource | Mapping[str, Any] | str,
    sections: Mapping[str, Section | None],
    resources: Mapping[str, Any],
    priority: Priority | str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest ``create`` sends, before validation.

    ``sections`` holds camelCase spec keys (``llm``, ``training``, ``runPolicy``...) to a model
    or a mapping; ``resources`` holds the resource shortcuts already merged; ``extra`` holds
    plain spec values (``description``, ``tags``, ``image``...). None values are left out.
    """
    spec: dict[str, Any] = {"modelType": str(model_type), "dataset": dataset_section(dataset)}
    for key, value in sections.items():
        dumped = section(value)
        if dumped is not None:
            spec[key] = dumped
    if resources:
        spec["resources"] = dict(resources)
    if priority is not None:
        spec["priority"] = str(priority)
    for key, value in (extra or {}).items():
        if value is not None:
            spec[key] = list(value) if isinstance(value, tuple) else value
    metadata: dict[str, Any] = {"namespace": namespace}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = GENERATE_NAME
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def merged_resources(
    resources: Section | None,
    gpu_type: str | None,
    workers: int | None,
    gpus_per_worker: int | None,
) -> dict[str, Any]:
    """``spec.resources`` with the ``gpu_type=``/``workers=``/``gpus_per_worker=`` shortcuts."""
    merged = section(resources) or {}
    shortcuts = {"gpuType": gpu_type, "workers": workers, "gpusPerWorker": gpus_per_worker}
    for key, value in shortcuts.items():
        if value is not None:
            merged.pop(_snake(key), None)
            merged[key] = value
    return merged


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def validated(manifest: Mapping[str, Any]) -> TrainingJob:
    """The manifest as a TrainingJob; ``ValidationError`` naming the field when it is invalid."""
    try:
        return TrainingJob.model_validate(manifest)
    except pydantic.ValidationError as err:
        raise from_pydantic(err) from None


def parse(stored: Any) -> TrainingJob:
    """A TrainingJob the API server returned; a ``KubetrainError`` if this SDK cannot read it.

    That happens when the cluster's CRD is newer than the SDK (a spec field it lacks).
    """
    try:
        return TrainingJob.model_validate(stored)
    except pydantic.ValidationError as err:
        name = (stored.get("metadata") or {}).get("name") if isinstance(stored, dict) else None
        problem = from_pydantic(err)
        raise KubetrainError(
            f"cannot read trainingjob {name!r} from the cluster: {problem.message} "
            "(is this SDK older than the cluster's CRD?)"
        ) from None


def wire(job: TrainingJob) -> dict[str, Any]:
    """What to send: only the fields the caller set, camelCase, enums as strings, no status.

    Defaults are left to the API server (they are the same: the CRD is generated from the
    models), so the stored object and its managed fields show what the user asked for.
    """
    return job.model_dump(
        mode="json", by_alias=True, exclude_unset=True, exclude_none=True, exclude={"status"}
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what the API server will store after ``patch``."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def tags(values: Sequence[str] | None) -> list[str] | None:
    """Tags as a list (the API treats them as a set)."""
    return None if values is None else list(dict.fromkeys(values))
