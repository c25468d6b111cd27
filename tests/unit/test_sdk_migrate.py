"""Requests written for the managed-training APIs, converted to TrainingJobs (no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetrain.api import TrainingJobSpec, VisionPipeline
from kubetrain.sdk import ValidationError, convert_request
from kubetrain.sdk.migrate import dataset, input_size

API = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob"}

# The examples of the two APIs' documentation, as they are written there.
PIPELINE_CALL: dict[str, Any] = {
    "dataset_name": "road-signs",
    "export_name": "road-signs-20260512-120000",
    "pipeline_type": "yolox",
    "name": "yolox-run-1",
    "config": {"epochs": 50},
    "gpu_type": "a10g",
    "wait": True,
    "poll_interval": 5.0,
    "timeout": 7200.0,
}
LLM_BODY: dict[str, Any] = {
    "name": "llama-7b-finetune",
    "modelType": "llm",
    "datasetId": "ds_1234567890abcdef",
    "config": {
        "baseModel": "meta-llama/Llama-2-7b-hf",
        "strategy": "lora",
        "parameters": {
            "rank": 16,
            "alpha": 32,
            "dropout": 0.1,
            "target_modules": ["q_proj", "v_proj", "k_proj", "o_proj"],
        },
        "training": {
            "epochs": 3,
            "batch_size": 4,
            "learning_rate": 2e-4,
            "weight_decay": 0.01,
            "warmup_steps": 100,
            "gradient_accumulation_steps": 8,
        },
        "optimization": {
            "mixed_precision": "fp16",
            "gradient_checkpointing": True,
            "max_grad_norm": 1.0,
        },
    },
    "gpuType": "a100",
    "maxWorkers": 2,
    "priority": "high",
}
VISION_BODY: dict[str, Any] = {
    "name": "custom-object-detection",
    "modelType": "vision",
    "datasetId": "ds_vision_objects_001",
    "config": {
        "architecture": "yolov8",
        "input_size": [640, 640],
        "num_classes": 80,
        "training": {
            "epochs": 100,
            "batch_size": 16,
            "learning_rate": 0.01,
            "momentum": 0.937,
            "weight_decay": 0.0005,
        },
        "augmentation": {
            "mixup": 0.1,
            "copy_paste": 0.5,
            "hsv_h": 0.015,
            "hsv_s": 0.7,
            "hsv_v": 0.4,
        },
    },
    "gpuType": "v100",
    "maxWorkers": 4,
}
LLM_KEYWORDS: dict[str, Any] = {
    "name": "llama-7b-finetune",
    "model_type": "llm",
    "dataset_id": "ds_1234567890abcdef",
    "config": {
        "base_model": "meta-llama/Llama-2-7b-hf",
        "strategy": "lora",
        "parameters": {
            "rank": 16,
            "alpha": 32,
            "dropout": 0.1,
            "target_modules": ["q_proj", "v_proj", "k_proj", "o_proj"],
        },
        "training": {"epochs": 3, "batch_size": 4, "learning_rate": 2e-4, "weight_decay": 0.01},
    },
    "gpu_type": "a100",
    "max_workers": 2,
}

YOLOX_DEFAULT = "fcos_cspdarknet_s"
LORA = {
    "rank": 16,
    "alpha": 32,
    "dropout": 0.1,
    "targetModules": ["q_proj", "v_proj", "k_proj", "o_proj"],
}


def _valid(manifest: dict[str, Any]) -> dict[str, Any]:
    """The converted spec, after checking the models accept it as it is."""
    TrainingJobSpec.model_validate(manifest["spec"])
    return manifest


FROM_SCRATCH = (
    "vision.pretrained: false: the job trains from random weights, because kubetrain never "
    "downloads published weights; set spec.vision.pretrainedWeights to a weights file's URI "
    "(e.g. RF-DETR's rf-detr-small.pth) to start from them"
)


def test_the_pipeline_call() -> None:
    converted = convert_request(**PIPELINE_CALL)
    assert _valid(converted.manifest) == {
        **API,
        "metadata": {"name": "yolox-run-1"},
        "spec": {
            "modelType": "vision",
            "dataset": {
                "pvc": {"claimName": "road-signs", "subPath": PIPELINE_CALL["export_name"]}
            },
            "vision": {
                "pipeline": "yolox",
                "task": "detection",
                "architecture": YOLOX_DEFAULT,
                "pretrained": False,
            },
            "training": {"epochs": 50},
            "resources": {"gpuType": "a10g"},
        },
    }
    assert (converted.wait, converted.poll_interval, converted.timeout) == (True, 5.0, 7200.0)
    assert converted.notes == (FROM_SCRATCH,)


def test_the_llm_rest_body() -> None:
    converted = convert_request(LLM_BODY)
    assert _valid(converted.manifest) == {
        **API,
        "metadata": {"name": "llama-7b-finetune"},
        "spec": {
            "modelType": "llm",
            "dataset": {"pvc": {"claimName": "ds-1234567890abcdef"}},
            "llm": {"baseModel": "meta-llama/Llama-2-7b-hf", "strategy": "lora", "lora": LORA},
            "training": {
                "epochs": 3,
                "batchSize": 4,
                "learningRate": 2e-4,
                "weightDecay": 0.01,
                "warmupSteps": 100,
                "gradientAccumulationSteps": 8,
            },
            "optimization": {
                "mixedPrecision": "fp16",
                "gradientCheckpointing": True,
                "maxGradNorm": 1.0,
            },
            "resources": {"gpuType": "a100", "workers": 2},
            "priority": "high",
        },
    }
    assert converted.wait is None
    assert converted.notes == (
        "datasetId: 'ds_1234567890abcdef' is read from PersistentVolumeClaim "
        "'ds-1234567890abcdef' (claim names have no capitals or '_')",
    )


def test_the_vision_rest_body_trains_yolox_for_yolov8() -> None:
    converted = convert_request(VISION_BODY)
    assert _valid(converted.manifest) == {
        **API,
        "metadata": {"name": "custom-object-detection"},
        "spec": {
            "modelType": "vision",
            "dataset": {"pvc": {"claimName": "ds-vision-objects-001"}},
            "vision": {
                "pipeline": "yolox",
                "task": "detection",
                "architecture": "fcos_cspdarknet_s",
                "pretrained": False,
                "inputSize": {"width": 640, "height": 640},
                "numClasses": 80,
                "augmentation": {
                    "mixup": 0.1,
                    "copyPaste": 0.5,
                    "hsvH": 0.015,
                    "hsvS": 0.7,
                    "hsvV": 0.4,
                },
            },
            "training": {
                "epochs": 100,
                "batchSize": 16,
                "learningRate": 0.01,
                "weightDecay": 0.0005,
                "momentum": 0.937,
            },
            "resources": {"gpuType": "v100", "workers": 4},
        },
    }
    assert converted.notes[-1] == FROM_SCRATCH
    assert converted.notes[-2] == (
        "config.architecture: 'yolov8' is not a kubetrain architecture; the job trains "
        "pipeline yolox (fcos_cspdarknet_s, an anchor-free detector on YOLOX's CSP-Darknet) "
        "instead"
    )


def test_the_python_sdk_call_in_snake_case() -> None:
    converted = convert_request(**LLM_KEYWORDS)
    assert _valid(converted.manifest)["spec"] == {
        "modelType": "llm",
        "dataset": {"pvc": {"claimName": "ds-1234567890abcdef"}},
        "llm": {"baseModel": "meta-llama/Llama-2-7b-hf", "strategy": "lora", "lora": LORA},
        "training": {"epochs": 3, "batchSize": 4, "learningRate": 2e-4, "weightDecay": 0.01},
        "resources": {"gpuType": "a100", "workers": 2},
    }
    # The same request as a body plus keywords gives the same job.
    body = {k: v for k, v in LLM_KEYWORDS.items() if k != "gpu_type"}
    assert convert_request(body, gpu_type="a100").manifest == converted.manifest


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([640, 480], (640, 480)),
        ([512], (512, 512)),
        (320, (320, 320)),
        ({"width": 800, "height": 608}, (800, 608)),
    ],
)
def test_every_input_size_shape(value: object, expected: tuple[int, int]) -> None:
    width, height = expected
    assert input_size(value) == {"width": width, "height": height}
    spec = convert_request(pipeline_type="yolox", dataset_name="d", config={"image_size": value})
    assert spec.manifest["spec"]["vision"]["inputSize"] == {"width": width, "height": height}


@pytest.mark.parametrize(
    ("architecture", "trains"),
    [
        ("yolov8", YOLOX_DEFAULT),
        ("yolov8n", YOLOX_DEFAULT),  # no nano: the smallest
        ("YOLOv5s", "fcos_cspdarknet_s"),
        ("yolo11m", "fcos_cspdarknet_m"),
        ("yolox-l", "fcos_cspdarknet_l"),
        ("yolox_x", "fcos_cspdarknet_x"),
    ],
)
def test_yolo_detectors_train_the_yolox_pipeline(architecture: str, trains: str) -> None:
    body = {"modelType": "vision", "datasetId": "d", "config": {"architecture": architecture}}
    converted = convert_request(body)
    vision = converted.job.spec.vision
    assert vision is not None
    assert (vision.pipeline, vision.architecture) == (VisionPipeline.YOLOX, trains)
    assert f"{architecture!r} is not a kubetrain architecture" in converted.notes[-2]


def test_other_architectures_are_kept_for_the_trainer_to_check() -> None:
    config = {"task": "detection", "architecture": "yolo_nas_s"}
    converted = convert_request(modelType="vision", datasetId="d", config=config)
    assert converted.manifest["spec"]["vision"] == config | {"pretrained": False}
    assert converted.notes == (FROM_SCRATCH,)


def test_named_weights_keep_a_vision_job_pretrained() -> None:
    config = {"architecture": "rfdetr_small", "task": "detection",
              "pretrained_weights": "s3://weights/rf-detr-small.pth"}  # fmt: skip
    converted = convert_request(modelType="vision", datasetId="d", config=config)
    vision = converted.job.spec.vision
    assert vision is not None and vision.pretrained
    assert vision.pretrained_weights == "s3://weights/rf-detr-small.pth"
    assert converted.notes == ()


def test_datasets_are_uris_or_claims() -> None:
    notes: list[str] = []
    assert dataset("s3://bucket/sets/", "export-1", "dataset_name", notes) == {
        "uri": "s3://bucket/sets/export-1"
    }
    assert dataset("hf://datasets/org/name", None, "datasetId", notes) == {
        "uri": "hf://datasets/org/name"
    }
    assert dataset("Road_Signs", None, "datasetId", notes) == {"pvc": {"claimName": "road-signs"}}
    assert notes == [
        "datasetId: 'Road_Signs' is read from PersistentVolumeClaim 'road-signs' "
        "(claim names have no capitals or '_')"
    ]


def test_client_side_and_free_text_keys_are_kept() -> None:
    converted = convert_request(
        LLM_BODY, description="first run", tags=["a", "b", "a"], wait=False, timeout=60
    )
    spec = converted.manifest["spec"]
    assert (spec["description"], spec["tags"]) == ("first run", ["a", "b"])
    assert (converted.wait, converted.timeout, converted.poll_interval) == (False, 60, None)


def test_kubetrain_fields_can_ride_along() -> None:
    converted = convert_request(
        LLM_BODY, runPolicy={"max_cost_usd": 50}, resources={"cpu": "8"}, checkpoint={"keepLast": 5}
    )
    spec = converted.manifest["spec"]
    assert spec["runPolicy"] == {"maxCostUSD": 50.0}
    assert spec["resources"] == {"gpuType": "a100", "workers": 2, "cpu": "8"}
    assert spec["checkpoint"] == {"keepLast": 5}


def _with(body: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (
            _with(VISION_BODY, "config.training.nesterov", True),
            "config.training.nesterov",
            "kubetrain has no such setting here (it has: batchSize, earlyStopping, epochs,",
        ),
        (
            _with(LLM_BODY, "config.parameters.bias", "none"),
            "config.parameters.bias",
            "kubetrain has no such setting here (it has: alpha, dropout, rank, targetModules)",
        ),
        (_with(VISION_BODY, "config.scheduler", "cosine"), "config.scheduler", "kubetrain has"),
        (
            _with(VISION_BODY, "config.input_size", [640, 640, 3]),
            "config.input_size",
            "must be [width, height], [size], a size in pixels or {width, height}, "
            "not [640, 640, 3]",
        ),
        (
            _with(VISION_BODY, "config.training", [100, 16]),
            "config.training",
            "must be a mapping, not list",
        ),
        (
            _with(VISION_BODY, "config.augmentation", [0.1]),
            "config.augmentation",
            "must be a mapping, not list",
        ),
        (_with(LLM_BODY, "spot", True), "spot", "has no TrainingJob equivalent"),
        (_with(LLM_BODY, "status", "pending"), "status", "belongs to a job the old API returned"),
        (
            _with(VISION_BODY, "config.epochs", 5),
            "config.epochs",
            "sets spec.training.epochs, which config.training.epochs already set",
        ),
        (_with(LLM_BODY, "gpu_type", "h100"), "gpu_type", "is given twice (as gpuType too)"),
        (_with(LLM_BODY, "wait", "yes"), "wait", "must be true or false, not str"),
        (
            _with(LLM_BODY, "datasetId", "not a/claim"),
            "datasetId",
            "'not a/claim' is neither a dataset URI",
        ),
    ],
)
def test_what_has_no_equivalent_fails_naming_its_path(
    body: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as bad:
        convert_request(body)
    assert bad.value.field == field
    assert (bad.value.rule or "").startswith(rule)
    assert str(bad.value).startswith(f"{field}: ")


def test_what_the_spec_refuses_names_the_spec_field() -> None:
    with pytest.raises(ValidationError) as bad:
        convert_request(_with(LLM_BODY, "config.training.learning_rate", 5))
    assert bad.value.field == "spec.training.learningRate"
    with pytest.raises(ValidationError) as bad:
        convert_request(_with(LLM_BODY, "maxWorkers", 64))
    assert bad.value.field == "spec.resources.workers"
    with pytest.raises(ValidationError) as bad:
        convert_request(_with(LLM_BODY, "config.strategy", "full"))
    assert bad.value.field == "spec.llm.lora"
    with pytest.raises(ValidationError) as bad:
        convert_request(pipeline_type="yolox", model_type="llm", dataset_name="d")
    assert bad.value.field == "pipeline_type"


def test_an_unnamed_pipeline_run_gets_a_generated_name() -> None:
    converted = convert_request(pipeline_type="sm_pytorch", dataset_name="roads")
    assert converted.manifest["metadata"] == {"generateName": "sm-pytorch-run-"}
    assert converted.job.spec.vision is not None
    assert converted.job.spec.vision.architecture == "smp_unet_resnet34"
