"""The TrainingJob models: defaults, bounds, cross-field rules, aliases, names, examples."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetrain.api import (
    API_VERSION,
    DEFAULT_LEARNING_RATE,
    KIND,
    MAX_NAME_LENGTH,
    Cel,
    Checkpoint,
    Condition,
    ConditionStatus,
    LoRAConfig,
    MixedPrecision,
    ModelType,
    Phase,
    Priority,
    Strategy,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
    VisionTask,
    allocation_summary,
    name_problems,
    validate_name,
)
from kubetrain.api.base import CelChecked
from kubetrain.api.spec import QUANTITY_PATTERN

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

_DELETE = object()  # llm_spec(...): remove the key instead of setting it

MINIMAL_LLM: dict[str, Any] = {
    "modelType": "llm",
    "dataset": {"synthetic": {}},
    "llm": {"baseModel": "hf-internal-testing/tiny-random-LlamaForCausalLM"},
}


def llm_spec(**changes: Any) -> dict[str, Any]:
    """A minimal valid llm spec with ``changes`` (dotted camelCase paths) applied."""
    spec = copy.deepcopy(MINIMAL_LLM)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def errors_of(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        TrainingJobSpec.model_validate(spec)
    return str(caught.value)


# -- defaults ------------------------------------------------------------------------------


def test_a_minimal_llm_spec_gets_every_default() -> None:
    spec = TrainingJobSpec.model_validate(MINIMAL_LLM)

    assert spec.resources.workers == 1
    assert spec.resources.gpus_per_worker == 1
    assert spec.resources.gpu_type is None
    assert spec.priority is Priority.NORMAL
    assert spec.suspend is False
    assert spec.resume_from is None
    assert spec.training.epochs == 3
    assert spec.training.batch_size == 8
    assert spec.training.learning_rate is None
    assert spec.training.gradient_accumulation_steps == 1
    assert spec.optimization.mixed_precision is MixedPrecision.NONE
    assert spec.optimization.max_grad_norm == 1.0
    assert spec.checkpoint.size == "10Gi"
    assert spec.checkpoint.keep_last == 3
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.max_cost_usd is None
    assert spec.dataset.synthetic is not None and spec.dataset.synthetic.samples == 256
    assert spec.llm is not None
    assert spec.llm.strategy is Strategy.LORA
    assert spec.llm.lora is None
    assert spec.llm.effective_lora() == LoRAConfig(rank=8, alpha=16, dropout=0.05)


@pytest.mark.parametrize(
    ("model_type", "section", "expected"),
    [
        ("llm", {"llm": {"baseModel": "m"}}, DEFAULT_LEARNING_RATE[ModelType.LLM]),
        ("multimodal", {"llm": {"baseModel": "m"}}, DEFAULT_LEARNING_RATE[ModelType.MULTIMODAL]),
        (
            "vision",
            {"vision": {"task": "detection", "architecture": "yolov8n"}},
            DEFAULT_LEARNING_RATE[ModelType.VISION],
        ),
        ("custom", {"image": "example.com/t:1", "command": ["train"]}, None),
    ],
)
def test_the_learning_rate_defaults_by_model_type(
    model_type: str, section: dict[str, Any], expected: float | None
) -> None:
    spec = TrainingJobSpec.model_validate(
        {"modelType": model_type, "dataset": {"uri": "s3://b/d"}, **section}
    )
    assert spec.effective_learning_rate() == expected
    explicit = spec.model_copy(
        update={"training": spec.training.model_copy(update={"learning_rate": 1e-3})}
    )
    assert explicit.effective_learning_rate() == 1e-3


def test_full_fine_tuning_uses_no_adapter() -> None:
    spec = TrainingJobSpec.model_validate(llm_spec(**{"llm.strategy": "full"}))
    assert spec.llm is not None and spec.llm.effective_lora() is None


# -- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "valid"),
    [
        ("resources.workers", 1, True),
        ("resources.workers", 32, True),
        ("resources.workers", 0, False),
        ("resources.workers", 33, False),
        ("training.learningRate", 1e-6, True),
        ("training.learningRate", 0.1, True),
        ("training.learningRate", 5e-7, False),
        ("training.learningRate", 0, False),
        ("training.learningRate", 5, False),
        ("training.epochs", 1, True),
        ("training.epochs", 0, False),
        ("training.batchSize", 1, True),
        ("training.batchSize", 0, False),
        ("training.batchSize", -4, False),
        ("training.momentum", 0.937, True),
        ("training.momentum", 1, False),
        ("llm.lora.rank", 1, True),
        ("llm.lora.rank", 0, False),
        ("llm.lora.dropout", 0, True),
        ("llm.lora.dropout", 0.999, True),
        ("llm.lora.dropout", 1, False),
        ("llm.lora.dropout", 1.5, False),
        ("llm.lora.dropout", -0.1, False),
        ("priority", "high", True),
        ("priority", "urgent", False),
        ("resources.gpuType", "a100", True),
        ("resources.gpuType", "rtx4090", True),
        ("resources.gpuType", "NVIDIA A100", False),
        ("resources.cpu", 2, True),
        ("resources.cpu", "500m", True),
        ("resources.memory", "64Gi", True),
        ("resources.memory", "1.5e3", True),
        ("resources.memory", "64GB", False),
        ("resources.cpu", -1, False),
        ("checkpoint.size", "0", False),
        ("runPolicy.backoffLimit", 0, True),
        ("runPolicy.backoffLimit", -1, False),
        ("runPolicy.maxCostUSD", 0, False),
        ("runPolicy.maxCostUSD", 12.5, True),
        ("dataset.uri", "s3://bucket/prefix", True),
        ("dataset.uri", "ftp://host/data", False),
        ("dataset.pvc", {"claimName": "data", "subPath": "a/b"}, True),
        ("dataset.pvc", {"claimName": "data", "subPath": "../etc"}, False),
        ("dataset.pvc", {"claimName": "data", "subPath": "/abs"}, False),
        ("tags", ["a", "b"], True),
        ("tags", [""], False),
    ],
)
def test_bounds(path: str, value: Any, valid: bool) -> None:
    changes: dict[str, Any] = {path: value}
    if path.startswith("dataset.") and path != "dataset.synthetic":
        changes["dataset.synthetic"] = _DELETE
    spec = llm_spec(**changes)
    if valid:
        TrainingJobSpec.model_validate(spec)
    else:
        assert path.rsplit(".", 1)[-1] in errors_of(spec)


def test_quantities_are_kept_as_strings() -> None:
    spec = TrainingJobSpec.model_validate(llm_spec(**{"resources.cpu": 4}))
    assert spec.resources.cpu == "4"
    assert QUANTITY_PATTERN.match("100Mi") and not QUANTITY_PATTERN.match("100 Mi")


# -- cross-field rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (llm_spec(llm=_DELETE), "spec.llm is required when spec.modelType is llm"),
        (llm_spec(llm=None), "spec.llm is required when spec.modelType is llm"),
        (
            llm_spec(modelType="multimodal", llm=_DELETE),
            "spec.llm is required when spec.modelType is multimodal",
        ),
        (
            llm_spec(modelType="vision", llm=_DELETE),
            "spec.vision is required when spec.modelType is vision",
        ),
        (
            llm_spec(modelType="vision"),
            "spec.llm is only allowed when spec.modelType is llm, multimodal or custom",
        ),
        (
            llm_spec(vision={"task": "detection", "architecture": "yolov8n"}),
            "spec.vision is only allowed when spec.modelType is vision or custom",
        ),
        (llm_spec(modelType="custom"), "spec.image and spec.command are required"),
        (llm_spec(modelType="custom", image="x:1"), "spec.image and spec.command are required"),
        (
            llm_spec(modelType="custom", image="x:1", command=[]),
            "spec.image and spec.command are required",
        ),
        (
            llm_spec(**{"llm.strategy": "full", "llm.lora": {"rank": 4}}),
            "spec.llm.lora must not be set when spec.llm.strategy is full",
        ),
        (llm_spec(dataset={}), "spec.dataset must set exactly one of pvc, uri or synthetic"),
        (
            llm_spec(dataset={"uri": "s3://b/x", "synthetic": {}}),
            "spec.dataset must set exactly one of pvc, uri or synthetic",
        ),
        (
            llm_spec(
                env=[
                    {
                        "name": "A",
                        "value": "1",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                    }
                ]
            ),
            "value and valueFrom are mutually exclusive",
        ),
        (
            llm_spec(env=[{"name": "A", "valueFrom": {}}]),
            "exactly one of secretKeyRef or configMapKeyRef",
        ),
    ],
)
def test_cross_field_rules(spec: dict[str, Any], message: str) -> None:
    assert message in errors_of(spec)


@pytest.mark.parametrize(
    "spec",
    [
        llm_spec(
            modelType="custom", image="registry.example.com/train:1", command=["python", "train.py"]
        ),
        llm_spec(modelType="custom", llm=_DELETE, image="x:1", command=["train"]),
        llm_spec(modelType="multimodal", **{"llm.baseModel": "llava-hf/llava-1.5-7b-hf"}),
        llm_spec(**{"llm.strategy": "qlora", "llm.lora": {"rank": 64}}),
        llm_spec(
            env=[
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
            ]
        ),
    ],
)
def test_valid_combinations(spec: dict[str, Any]) -> None:
    TrainingJobSpec.model_validate(spec)


def test_every_rule_with_a_python_twin_is_checked() -> None:
    """A rule without ``check`` is only enforced by the API server: it must be a transition rule."""

    def models(cls: type) -> list[type]:
        return [cls, *(m for sub in cls.__subclasses__() for m in models(sub))]

    for model in models(CelChecked):
        for rule in model.cel_rules:
            assert isinstance(rule, Cel)
            assert rule.check is not None or "oldSelf" in rule.rule, (model, rule)


# -- aliases and unknown fields ---------------------------------------------------------------


def test_camel_case_aliases_and_python_names_both_validate() -> None:
    by_alias = TrainingJobSpec.model_validate(
        llm_spec(**{"runPolicy.maxCostUSD": 10, "llm.maxSeqLength": 1024})
    )
    by_name = TrainingJobSpec.model_validate(
        {
            "model_type": "llm",
            "dataset": {"synthetic": {}},
            "llm": {"base_model": MINIMAL_LLM["llm"]["baseModel"], "max_seq_length": 1024},
            "run_policy": {"max_cost_usd": 10},
        }
    )
    assert by_alias == by_name
    wire = by_alias.model_dump(by_alias=True, exclude_none=True)
    assert wire["runPolicy"]["maxCostUSD"] == 10
    assert wire["llm"]["maxSeqLength"] == 1024
    assert "max_seq_length" not in wire["llm"]


@pytest.mark.parametrize(
    "spec",
    [
        llm_spec(epochs=3),
        llm_spec(**{"training.learning_rate_schedule": "cosine"}),
        llm_spec(**{"llm.lora.ranks": 4}),
        llm_spec(**{"resources.maxWorkers": 2}),
    ],
)
def test_unknown_spec_fields_are_rejected(spec: dict[str, Any]) -> None:
    assert "Extra inputs are not permitted" in errors_of(spec)


def test_vision_aliases() -> None:
    spec = TrainingJobSpec.model_validate(
        {
            "modelType": "vision",
            "dataset": {"pvc": {"claimName": "imgs"}, "format": "coco"},
            "vision": {
                "task": "instanceSegmentation",
                "architecture": "maskrcnn_resnet50_fpn",
                "inputSize": {"width": 800, "height": 600},
                "augmentation": {"hsvH": 0.015, "copyPaste": 0.5, "horizontalFlip": 0.5},
            },
        }
    )
    assert spec.vision is not None and spec.vision.task is VisionTask.INSTANCE_SEGMENTATION
    assert spec.vision.augmentation is not None and spec.vision.augmentation.hsv_h == 0.015
    wire = spec.model_dump(by_alias=True, exclude_none=True)
    assert wire["vision"]["augmentation"]["copyPaste"] == 0.5


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama-7b-finetune", True),
        ("a", True),
        ("a" * MAX_NAME_LENGTH, True),
        ("a" * (MAX_NAME_LENGTH + 1), False),
        ("7b-llama", False),
        ("llama.7b", False),
        ("Llama", False),
        ("llama-", False),
    ],
)
def test_job_names_leave_room_for_child_names(name: str, ok: bool) -> None:
    assert (name_problems(name) == []) is ok
    job = {"metadata": {"name": name}, "spec": MINIMAL_LLM}
    if ok:
        assert validate_name(name) == name
        TrainingJob.model_validate(job)
        assert len(f"{name}-worker-31") <= 63
    else:
        with pytest.raises(ValueError, match=r"metadata\.name"):
            validate_name(name)
        with pytest.raises(ValidationError, match=r"metadata\.name"):
            TrainingJob.model_validate(job)


def test_a_generated_name_is_checked_once_assigned() -> None:
    job = TrainingJob.model_validate({"metadata": {"generateName": "llama-"}, "spec": MINIMAL_LLM})
    assert job.metadata.name is None


# -- the whole object, status ---------------------------------------------------------------


def test_a_stored_object_parses_and_round_trips() -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": "tiny",
            "namespace": "team-a",
            "generation": 2,
            "uid": "0b6c",
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": MINIMAL_LLM,
        "status": {
            "phase": "Running",
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "WorkersRunning",
                    "message": "1/1 workers running",
                    "lastTransitionTime": "2024-01-15T10:30:00Z",
                    "observedGeneration": 2,
                }
            ],
            "progress": {"currentEpoch": 2, "totalEpochs": 3, "percentage": 66.5},
            "checkpoints": [{"id": "epoch-0001", "epoch": 1, "sizeBytes": 2300000000}],
            "latestCheckpoint": "epoch-0001",
            "estimatedCost": {"hourlyUSD": 8.5, "totalUSD": 25.5},
            "fieldFromANewerOperator": {"x": 1},
        },
    }
    job = TrainingJob.model_validate(body)

    assert job.metadata.generation == 2
    assert job.status.phase is Phase.RUNNING
    running = job.status.condition("Running")
    assert running is not None and running.status is ConditionStatus.TRUE
    assert running.last_transition_time == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert job.status.estimated_cost is not None and job.status.estimated_cost.total_usd == 25.5
    assert job.status.checkpoints == [Checkpoint(id="epoch-0001", epoch=1, size_bytes=2300000000)]

    manifest = job.to_manifest(with_status=True)
    assert manifest["status"]["conditions"][0]["lastTransitionTime"] == "2024-01-15T10:30:00Z"
    assert manifest["status"]["estimatedCost"] == {"hourlyUSD": 8.5, "totalUSD": 25.5}
    assert "fieldFromANewerOperator" not in manifest["status"]
    assert "status" not in job.to_manifest()
    assert TrainingJob.model_validate(manifest) == job


def test_status_defaults_and_helpers() -> None:
    status = TrainingJobStatus()
    assert status.phase is None and status.conditions == [] and status.restarts == 0
    assert status.condition("Failed") is None
    assert [p for p in Phase if p.finished] == [Phase.COMPLETED, Phase.FAILED]
    assert allocation_summary("a100", 1, 2) == "a100x2"
    assert allocation_summary("h100", 8, 4) == "h100:8x4"


@pytest.mark.parametrize(
    "condition",
    [
        {
            "type": "Running",
            "status": "Maybe",
            "reason": "X",
            "message": "",
            "lastTransitionTime": "2024-01-15T10:30:00Z",
        },
        {
            "type": "Running",
            "status": "True",
            "reason": "not camel",
            "message": "",
            "lastTransitionTime": "2024-01-15T10:30:00Z",
        },
        {"type": "Running", "status": "True", "reason": "X", "message": ""},
    ],
)
def test_malformed_conditions_are_rejected(condition: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate(condition)


# -- examples -----------------------------------------------------------------------------


def test_there_are_seven_examples() -> None:
    assert [p.name for p in EXAMPLES] == [
        "kueue-tiny-lora.yaml",
        "llama2-7b-lora.yaml",
        "rfdetr-pipeline.yaml",
        "tiny-lora-cpu.yaml",
        "tiny-multimodal-cpu.yaml",
        "tiny-vision-cpu.yaml",
        "yolo-detector.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_and_says_what_it_does(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# ") and len(text.splitlines()[0]) > 20
    job = TrainingJob.model_validate(yaml.safe_load(text))
    assert job.metadata.name and not name_problems(job.metadata.name)


def _example(name: str) -> TrainingJob:
    return TrainingJob.model_validate(yaml.safe_load((ROOT / "examples" / name).read_text()))


def test_the_llama_example_is_the_seed_job() -> None:
    spec = _example("llama2-7b-lora.yaml").spec
    assert spec.model_type is ModelType.LLM and spec.llm is not None and spec.llm.lora is not None
    assert spec.llm.base_model == "meta-llama/Llama-2-7b-hf"
    assert spec.llm.strategy is Strategy.LORA
    lora = spec.llm.lora
    assert (lora.rank, lora.alpha, lora.dropout) == (16, 32, 0.1)
    assert sorted(lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    t = spec.training
    assert (t.epochs, t.batch_size, t.learning_rate, t.weight_decay) == (3, 4, 2e-4, 0.01)
    assert (t.warmup_steps, t.gradient_accumulation_steps) == (100, 8)
    o = spec.optimization
    assert (o.mixed_precision, o.gradient_checkpointing, o.max_grad_norm) == ("fp16", True, 1.0)
    assert (spec.resources.gpu_type, spec.resources.workers) == ("a100", 2)
    assert spec.priority is Priority.HIGH


def test_the_yolo_example_is_the_seed_job() -> None:
    spec = _example("yolo-detector.yaml").spec
    assert spec.model_type is ModelType.VISION and spec.vision is not None
    v = spec.vision
    assert v.task is VisionTask.DETECTION
    assert v.input_size is not None and (v.input_size.width, v.input_size.height) == (640, 640)
    assert v.num_classes == 80
    t = spec.training
    assert (t.epochs, t.batch_size, t.learning_rate, t.momentum, t.weight_decay) == (
        100,
        16,
        0.01,
        0.937,
        0.0005,
    )
    a = v.augmentation
    assert a is not None
    assert (a.mixup, a.copy_paste, a.hsv_h, a.hsv_s, a.hsv_v) == (0.1, 0.5, 0.015, 0.7, 0.4)
    assert (spec.resources.gpu_type, spec.resources.workers) == ("v100", 4)


@pytest.mark.parametrize("name", ["tiny-lora-cpu.yaml", "tiny-vision-cpu.yaml"])
def test_the_tiny_examples_run_on_cpu_offline_sized(name: str) -> None:
    spec = _example(name).spec
    assert spec.resources.gpu_type == "cpu" and not spec.uses_gpus()
    assert spec.resources.workers == 1
    assert spec.optimization.mixed_precision is MixedPrecision.NONE
    # Seconds of training on a CPU (long enough for a stop to land mid-run), not minutes.
    assert spec.dataset.synthetic is not None and spec.dataset.synthetic.samples <= 4096
    assert spec.training.epochs <= 3
