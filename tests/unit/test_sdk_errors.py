"""Typed SDK errors from API server responses and from local validation."""

from __future__ import annotations

import json

import pydantic
import pytest

from kubetrain.api import TrainingJob
from kubetrain.sdk.errors import (
    ConflictError,
    KubetrainError,
    NotFoundError,
    PermissionDeniedError,
    PollTimeoutError,
    ValidationError,
    from_pydantic,
    from_response,
)

# What kube-apiserver answers when a CEL transition rule and a schema bound fail together.
INVALID = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'TrainingJob.kubetrain.io "llama" is invalid: [spec.llm.baseModel: Invalid '
    'value: "string": spec.llm.baseModel is immutable: checkpoints only fit the model they '
    "were trained from, spec.training.learningRate: Invalid value: 5: "
    "spec.training.learningRate in body should be less than or equal to 0.1]",
    "reason": "Invalid",
    "details": {
        "name": "llama",
        "group": "kubetrain.io",
        "kind": "TrainingJob",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: "string": spec.llm.baseModel is immutable: '
                "checkpoints only fit the model they were trained from",
                "field": "spec.llm.baseModel",
            },
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 5: spec.training.learningRate in body should be "
                "less than or equal to 0.1",
                "field": "spec.training.learningRate",
            },
        ],
    },
    "code": 422,
}


def test_a_422_names_each_field_and_rule() -> None:
    error = from_response(422, json.dumps(INVALID))
    assert isinstance(error, ValidationError) and isinstance(error, KubetrainError)
    assert error.status == 422 and error.reason == "Invalid"
    assert error.field == "spec.llm.baseModel"
    assert error.rule is not None and "is immutable" in error.rule
    assert [c.field for c in error.causes] == ["spec.llm.baseModel", "spec.training.learningRate"]
    assert error.causes[1].reason == "FieldValueInvalid"
    assert str(error).startswith('TrainingJob.kubetrain.io "llama" is invalid')


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (404, "NotFound", NotFoundError),
        (409, "AlreadyExists", ConflictError),
        (409, "Conflict", ConflictError),
        (403, "Forbidden", PermissionDeniedError),
        (401, "Unauthorized", PermissionDeniedError),
        (500, "InternalError", KubetrainError),
        (429, "TooManyRequests", KubetrainError),
    ],
)
def test_statuses_map_to_their_error_types(
    status: int, reason: str, kind: type[KubetrainError]
) -> None:
    body = json.dumps({"kind": "Status", "message": f"it said {reason}", "reason": reason})
    error = from_response(status, body.encode())
    assert type(error) is kind
    assert (error.status, error.reason, error.message) == (status, reason, f"it said {reason}")


def test_a_body_that_is_not_a_status_still_gives_a_message() -> None:
    error = from_response(502, "<html>bad gateway</html>", "Bad Gateway")
    assert type(error) is KubetrainError and error.message == "Bad Gateway"
    assert from_response(503, None).message == "the API server answered 503"
    assert from_response(422, "{}").causes == []  # type: ignore[attr-defined]


def _invalid(spec: dict[str, object], name: str = "job") -> ValidationError:
    manifest = {"metadata": {"name": name}, "spec": spec}
    with pytest.raises(pydantic.ValidationError) as caught:
        TrainingJob.model_validate(manifest)
    return from_pydantic(caught.value)


LLM = {"modelType": "llm", "dataset": {"synthetic": {}}, "llm": {"baseModel": "m"}}


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        (
            {**LLM, "training": {"learningRate": 5}},
            "spec.training.learningRate",
            "less than or equal to 0.1",
        ),
        (  # snake_case input keys are reported as the API spells them
            {**LLM, "training": {"learning_rate": 5}},
            "spec.training.learningRate",
            "less than or equal to 0.1",
        ),
        (
            {"modelType": "llm", "dataset": {"synthetic": {}}},
            "spec.llm",
            "spec.llm is required when spec.modelType is llm",
        ),
        (
            {**LLM, "dataset": {"uri": "s3://a/b", "synthetic": {}}},
            "spec.dataset",
            "exactly one of pvc, uri or synthetic",
        ),
        ({**LLM, "resources": {"workers": 64}}, "spec.resources.workers", "less than or equal"),
        ({**LLM, "training": {"epoch": 3}}, "spec.training.epoch", "Extra inputs"),
    ],
)
def test_local_validation_errors_look_like_the_servers(
    spec: dict[str, object], field: str, rule: str
) -> None:
    error = _invalid(spec)
    assert error.field == field
    assert rule in (error.rule or "")
    assert error.status is None and str(error).startswith(field)


def test_a_bad_name_is_reported_once() -> None:
    error = _invalid(LLM, name="Llama_7B")
    assert error.field == "metadata.name"
    assert str(error).startswith("metadata.name must be a DNS-1035 label")


def test_a_poll_timeout_says_the_job_keeps_running() -> None:
    error = PollTimeoutError("llama", 2.5, "Running", "Completed or Failed")
    assert str(error) == (
        "trainingjob 'llama' did not reach Completed or Failed within 2.5s (phase Running); "
        "it keeps running"
    )
    assert (error.name, error.timeout, error.phase) == ("llama", 2.5, "Running")
