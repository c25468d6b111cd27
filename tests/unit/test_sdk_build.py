"""Manifests built by ``Client.create``, local validation, and merge patches."""

from __future__ import annotations

import pytest

from kubetrain.api import LLMConfig, TrainingParams
from kubetrain.sdk import KubetrainError, ValidationError
from kubetrain.sdk.build import (
    dataset_section,
    job_manifest,
    merge_patch,
    merged_resources,
    parse,
    validated,
    wire,
)


def _manifest(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "name": "llama",
        "namespace": "team-a",
        "model_type": "llm",
        "dataset": "hf://datasets/tatsu-lab/alpaca",
        "sections": {"llm": LLMConfig(base_model="meta-llama/Llama-2-7b-hf")},
        "resources": {},
    }
    arguments.update(overrides)
    return job_manifest(**arguments)  # type: ignore[arg-type]


def test_the_manifest_holds_only_what_was_given_in_camel_case() -> None:
    manifest = _manifest(
        sections={
            "llm": {"base_model": "meta-llama/Llama-2-7b-hf", "lora": {"rank": 16}},
            "training": TrainingParams(epochs=2, learning_rate=1e-4),
            "vision": None,
        },
        resources=merged_resources(None, "h100", 2, 8),
        priority="high",
        labels={"team": "nlp"},
        extra={"description": "first try", "tags": ("a", "b"), "image": None},
    )
    sent = wire(validated(manifest))
    assert sent == {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "llama", "namespace": "team-a", "labels": {"team": "nlp"}},
        "spec": {
            "modelType": "llm",
            "description": "first try",
            "tags": ["a", "b"],
            "dataset": {"uri": "hf://datasets/tatsu-lab/alpaca"},
            "llm": {"baseModel": "meta-llama/Llama-2-7b-hf", "lora": {"rank": 16}},
            "training": {"epochs": 2, "learningRate": 1e-4},
            "resources": {"gpuType": "h100", "gpusPerWorker": 8, "workers": 2},
            "priority": "high",
        },
    }


def test_without_a_name_the_api_server_generates_one() -> None:
    metadata = _manifest(name=None)["metadata"]
    assert metadata == {"namespace": "team-a", "generateName": "tj-"}


def test_resource_shortcuts_override_the_section() -> None:
    merged = merged_resources({"gpu_type": "a100", "workers": 4, "cpu": "8"}, "l4", None, None)
    assert merged == {"workers": 4, "cpu": "8", "gpuType": "l4"}
    assert merged_resources(None, None, None, None) == {}


def test_datasets_from_strings_models_and_mappings() -> None:
    assert dataset_section("s3://bucket/data") == {"uri": "s3://bucket/data"}
    assert dataset_section({"pvc": {"claimName": "data"}}) == {"pvc": {"claimName": "data"}}


def test_validation_names_the_field_before_anything_is_sent() -> None:
    with pytest.raises(ValidationError) as bad:
        validated(_manifest(sections={"llm": {"baseModel": "m"}, "training": {"batchSize": 0}}))
    assert bad.value.field == "spec.training.batchSize"
    with pytest.raises(ValidationError, match=r"spec\.vision is required"):
        validated(_manifest(model_type="vision", sections={}))


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"spec": {"suspend": False, "resumeFrom": "step-1", "training": {"epochs": 2}}}
    patch = {"spec": {"suspend": True, "resumeFrom": None, "training": {"seed": 7}}, "x": [1]}
    assert merge_patch(target, patch) == {
        "spec": {"suspend": True, "training": {"epochs": 2, "seed": 7}},
        "x": [1],
    }
    assert target["spec"]["resumeFrom"] == "step-1"  # the target is not changed
    assert merge_patch({"a": 1}, "text") == "text"
    assert merge_patch("text", {"a": {"b": None}}) == {"a": {}}


def test_an_object_this_sdk_cannot_read_is_a_kubetrain_error() -> None:
    stored = {
        "metadata": {"name": "future"},
        "spec": {"modelType": "llm", "dataset": {"synthetic": {}}, "llm": {"baseModel": "m"}},
    }
    assert parse(stored).metadata.name == "future"
    stored["spec"]["quantumBits"] = 4  # type: ignore[index]
    with pytest.raises(KubetrainError, match=r"trainingjob 'future'.*spec\.quantumBits"):
        parse(stored)
