"""The generated CRD on the real API server: examples accepted, bad input rejected at apply.

Objects go through kubectl with ``--validate=strict``: kubectl then asks the server for
strict field validation (``fieldValidation=Strict``), so an unknown field is an error
instead of being pruned silently. Every rejection must name the field and the rule, and
the pydantic models (what the operator validates with) must reject the same objects.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pydantic import ValidationError

from kubetrain.api import (
    API_VERSION,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Checkpoint,
    Condition,
    ConditionStatus,
    EstimatedCost,
    Metrics,
    Phase,
    Progress,
    ResourceAllocation,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
    allocation_summary,
)
from kubetrain.api.crd import CRD_FILENAME
from kubetrain.localcluster import ControlPlane, find_binary
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

Manifest = dict[str, Any]


class Kubectl:
    """kubectl against the test cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        self.base = [str(find_binary("kubectl")), "--kubeconfig", str(kubeconfig)]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def kubectl(cluster: ControlPlane) -> Kubectl:
    return Kubectl(cluster.kubeconfig)


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> str:
    """The CRD from crds/, installed once (it is cluster-scoped) and serving."""
    kubectl.ok(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / CRD_FILENAME)
    )
    kubectl.ok("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    eventually(
        lambda: kubectl("get", "trainingjobs", "--all-namespaces").returncode == 0,
        timeout=30,
        what="TrainingJobs to be served",
    )
    return CRD_NAME


@pytest.fixture(scope="module")
def scratch(core: client.CoreV1Api, crd: str) -> Iterator[str]:
    """One namespace for the rejection cases (parametrized ids make poor namespace names)."""
    name = f"nop-crd-validation-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def manifest(name: str, spec: dict[str, Any]) -> Manifest:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


LLM_SPEC: dict[str, Any] = {
    "modelType": "llm",
    "dataset": {"synthetic": {"samples": 64}},
    "llm": {"baseModel": "hf-internal-testing/tiny-random-LlamaForCausalLM"},
    "resources": {"gpuType": "cpu"},
}
VISION_SPEC: dict[str, Any] = {
    "modelType": "vision",
    "dataset": {"synthetic": {"samples": 64}},
    "vision": {"task": "classification", "architecture": "resnet18"},
    "resources": {"gpuType": "cpu"},
}


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with dotted-path changes; a value of None removes the key."""
    spec = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def dumps(obj: Manifest) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


# -- examples, columns, discovery -----------------------------------------------------------


def test_every_example_is_accepted_and_listed_with_the_columns(
    kubectl: Kubectl, crd: str, quiet_namespace: str
) -> None:
    namespace = quiet_namespace
    out = kubectl.ok("apply", "--validate=strict", "-n", namespace, "-f", str(ROOT / "examples"))
    names = sorted(
        TrainingJob.model_validate(yaml.safe_load(p.read_text())).metadata.name or ""
        for p in EXAMPLES
    )
    assert out.count(" created") == len(EXAMPLES) == 7

    table = kubectl.ok("get", "tj", "-n", namespace).splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "EPOCH", "LOSS", "GPUS", "AGE"]
    assert sorted(row.split()[0] for row in table[1:]) == names

    wide = kubectl.ok("get", "tj", "-n", namespace, "-o", "wide").splitlines()[0].split()
    assert wide[7:] == [
        "TYPE",
        "PRIORITY",
        "EPOCHS",
        "SUSPENDED",
        "CHECKPOINT",
        "COST",
        "ETA",
    ]

    by_category = kubectl.ok("get", "kubetrain", "-n", namespace, "-o", "name").split()
    assert sorted(by_category) == [f"trainingjob.{GROUP}/{n}" for n in names]

    vision = kubectl.ok(
        "get", "tj", "-n", namespace, "--field-selector", "spec.modelType=vision", "-o", "name"
    ).split()
    assert sorted(vision) == [
        f"trainingjob.{GROUP}/custom-object-detection",
        f"trainingjob.{GROUP}/road-signs-rfdetr",
        f"trainingjob.{GROUP}/tiny-vision",
    ]


def test_kubectl_explain_documents_every_spec_field(kubectl: Kubectl, crd: str) -> None:
    def explained() -> str | None:
        done = kubectl("explain", "trainingjob.spec")
        return done.stdout if done.returncode == 0 and "modelType" in done.stdout else None

    text = eventually(explained, timeout=60, what="kubectl explain trainingjob.spec")
    for field in TrainingJobSpec.model_json_schema(by_alias=True)["properties"]:
        assert f"\n  {field}\t" in text, f"{field} is not explained"
    assert "What to train" in text

    lora = " ".join(kubectl.ok("explain", "trainingjob.spec.llm.lora").split())
    assert "LoRA rank r" in lora and "in [0, 1)" in lora
    workers = " ".join(kubectl.ok("explain", "tj.spec.resources.workers").split())
    assert "between 1 and 32" in workers and "Defaults to 1." in workers


# -- defaults and status ---------------------------------------------------------------------


def _custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_lists(v) for k, v in value.items() if v != []}
    return value


def test_the_server_applies_the_defaults_of_the_models(
    api_client: client.ApiClient, crd: str, quiet_namespace: str
) -> None:
    namespace = quiet_namespace
    stored = _custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest("defaults", LLM_SPEC)
    )

    expected = TrainingJobSpec.model_validate(LLM_SPEC).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert stored["spec"] == _without_empty_lists(expected)  # unset lists are not stored
    assert stored["spec"]["resources"]["workers"] == 1
    assert stored["spec"]["priority"] == "normal"
    assert stored["spec"]["suspend"] is False


def test_a_status_written_by_the_operator_is_accepted_and_shown(
    api_client: client.ApiClient, kubectl: Kubectl, crd: str, quiet_namespace: str
) -> None:
    namespace = quiet_namespace
    api = _custom(api_client)
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest("running", LLM_SPEC)
    )
    now = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    status = TrainingJobStatus(
        phase=Phase.RUNNING,
        observed_generation=1,
        conditions=[
            Condition(
                type="Running",
                status=ConditionStatus.TRUE,
                reason="WorkersRunning",
                message="2/2 workers running",
                observed_generation=1,
                last_transition_time=now,
            )
        ],
        progress=Progress(current_epoch=2, total_epochs=3, current_step=1247, percentage=66.5),
        metrics=Metrics(current_loss=0.342, throughput=1250, throughput_unit="tokens/s"),
        checkpoints=[Checkpoint(id="epoch-0001", epoch=1, loss=0.456, created_at=now)],
        latest_checkpoint="epoch-0001",
        resource_allocation=ResourceAllocation(
            gpu_type="a100", workers=2, gpus_per_worker=1, summary=allocation_summary("a100", 1, 2)
        ),
        estimated_cost=EstimatedCost(hourly_usd=8.5, total_usd=25.5),
        start_time=now,
    )
    body = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}

    stored = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "running", body
    )

    assert TrainingJob.model_validate(stored).status == status
    row = kubectl.ok("get", "tj", "running", "-n", namespace, "--no-headers").split()
    assert row[:6] == ["running", "Running", "66.5", "2", "0.342", "a100x2"]


# -- bad input ---------------------------------------------------------------------------


def _bad(name: str, spec: dict[str, Any], *expected: str) -> Any:
    return pytest.param(manifest(name, spec), expected, id=name)


BAD_INPUT = [
    _bad(
        "learning-rate-5",
        changed(LLM_SPEC, **{"training.learningRate": 5}),
        "spec.training.learningRate",
        "must be at least 1e-06 and at most 0.1",
    ),
    _bad(
        "learning-rate-0",
        changed(LLM_SPEC, **{"training.learningRate": 0}),
        "spec.training.learningRate",
        "must be at least 1e-06 and at most 0.1",
    ),
    _bad(
        "workers-0",
        changed(LLM_SPEC, **{"resources.workers": 0}),
        "spec.resources.workers",
        "should be greater than or equal to 1",
    ),
    _bad(
        "workers-33",
        changed(LLM_SPEC, **{"resources.workers": 33}),
        "spec.resources.workers",
        "should be less than or equal to 32",
    ),
    _bad(
        "unknown-model-type",
        changed(LLM_SPEC, modelType="diffusion"),
        "spec.modelType",
        'Unsupported value: "diffusion"',
    ),
    _bad("missing-dataset", changed(LLM_SPEC, dataset=None), "spec.dataset", "Required value"),
    _bad(
        "llm-without-llm",
        changed(LLM_SPEC, llm=None),
        "spec.llm",
        "spec.llm is required when spec.modelType is llm",
    ),
    _bad(
        "unknown-spec-field",
        {**LLM_SPEC, "epochs": 3},
        'unknown field "spec.epochs"',
    ),
    _bad(
        "unknown-nested-field",
        changed(LLM_SPEC, **{"llm.lora": {"ranks": 4}}),
        'unknown field "spec.llm.lora.ranks"',
    ),
    _bad(
        "negative-batch-size",
        changed(LLM_SPEC, **{"training.batchSize": -4}),
        "spec.training.batchSize",
        "should be greater than or equal to 1",
    ),
    _bad(
        "dropout-1-5",
        changed(LLM_SPEC, **{"llm.lora": {"dropout": 1.5}}),
        "spec.llm.lora.dropout",
        "should be less than 1",
    ),
    _bad(
        "vision-without-vision",
        changed(VISION_SPEC, vision=None),
        "spec.vision",
        "spec.vision is required when spec.modelType is vision",
    ),
    _bad(
        "vision-without-a-model",
        changed(VISION_SPEC, **{"vision.architecture": None}),
        "spec.vision needs a pipeline, or a task and an architecture",
    ),
    _bad(
        "pipeline-of-another-task",
        changed(VISION_SPEC, **{"vision.pipeline": "sm_pytorch", "vision.architecture": None}),
        "spec.vision.task",
        "spec.vision.task does not match spec.vision.pipeline: classification trains",
    ),
    _bad(
        "unknown-pipeline",
        changed(VISION_SPEC, **{"vision.pipeline": "yolov8"}),
        "spec.vision.pipeline",
        'Unsupported value: "yolov8"',
    ),
    _bad(
        "custom-without-image",
        changed(LLM_SPEC, modelType="custom", command=["train"]),
        "spec.image and spec.command are required when spec.modelType is custom",
    ),
    _bad(
        "two-dataset-sources",
        changed(LLM_SPEC, **{"dataset.uri": "s3://bucket/data"}),
        "spec.dataset",
        "must set exactly one of pvc, uri or synthetic",
    ),
    _bad(
        "lora-with-full-strategy",
        changed(LLM_SPEC, **{"llm.strategy": "full", "llm.lora": {"rank": 8}}),
        "spec.llm.lora",
        "must not be set when spec.llm.strategy is full",
    ),
    _bad(
        "gpu-type-not-a-key",
        changed(LLM_SPEC, **{"resources.gpuType": "A100 80GB"}),
        "spec.resources.gpuType",
        "should match",
    ),
    _bad(
        "memory-not-a-quantity",
        changed(LLM_SPEC, **{"resources.memory": "64GB"}),
        "spec.resources.memory",
        "must be a positive Kubernetes quantity",
    ),
    _bad(
        "a-name-too-long-for-the-pods-it-names-" + "x" * 11,
        LLM_SPEC,
        "metadata.name must be at most 48 characters",
    ),
    _bad("llama.v2", LLM_SPEC, "metadata.name must be a DNS-1035 label"),
]


@pytest.mark.parametrize(("obj", "expected"), BAD_INPUT)
def test_bad_input_is_rejected_naming_the_field_and_the_rule(
    kubectl: Kubectl, scratch: str, obj: Manifest, expected: tuple[str, ...]
) -> None:
    done = kubectl("create", "--validate=strict", "-n", scratch, "-f", "-", stdin=dumps(obj))

    assert done.returncode != 0, f"accepted: {done.stdout}"
    for text in expected:
        assert text in done.stderr
    with pytest.raises(ValidationError):
        TrainingJob.model_validate(obj)


def test_a_null_section_counts_as_missing(kubectl: Kubectl, scratch: str) -> None:
    """Spec fields are not nullable, so the server prunes a null before CEL's has() runs."""
    obj = manifest("null-llm", {**LLM_SPEC, "llm": None})
    done = kubectl("create", "-n", scratch, "-f", "-", stdin=json.dumps(obj))
    assert done.returncode != 0
    assert "spec.llm is required when spec.modelType is llm" in done.stderr


# -- immutability ---------------------------------------------------------------------------


Change = Callable[[dict[str, Any]], dict[str, Any]]

IMMUTABLE = [
    pytest.param(
        LLM_SPEC,
        lambda s: {**changed(s, llm=None), "modelType": "vision", "vision": VISION_SPEC["vision"]},
        "spec.modelType is immutable",
        id="modelType",
    ),
    pytest.param(
        LLM_SPEC,
        lambda s: changed(s, **{"dataset.synthetic.samples": 32}),
        "spec.dataset is immutable",
        id="dataset",
    ),
    pytest.param(
        LLM_SPEC,
        lambda s: changed(s, **{"llm.baseModel": "meta-llama/Llama-2-7b-hf"}),
        "spec.llm.baseModel is immutable",
        id="baseModel",
    ),
    pytest.param(
        VISION_SPEC,
        lambda s: changed(s, **{"vision.architecture": "resnet50"}),
        "spec.vision.architecture is immutable",
        id="architecture",
    ),
    pytest.param(
        changed(VISION_SPEC, **{"vision.pipeline": "classification"}),
        lambda s: changed(s, **{"vision.pipeline": "yolox", "vision.task": "detection"}),
        "spec.vision.pipeline is immutable",
        id="pipeline",
    ),
]


@pytest.mark.parametrize(("spec", "change", "message"), IMMUTABLE)
def test_fields_fixed_at_creation_cannot_change(
    kubectl: Kubectl, scratch: str, spec: dict[str, Any], change: Change, message: str
) -> None:
    name = f"immutable-{uuid.uuid4().hex[:6]}"
    kubectl.ok("apply", "-n", scratch, "-f", "-", stdin=dumps(manifest(name, spec)))

    done = kubectl("apply", "-n", scratch, "-f", "-", stdin=dumps(manifest(name, change(spec))))

    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert message in done.stderr


def test_suspend_resume_and_limits_can_change(kubectl: Kubectl, scratch: str) -> None:
    kubectl.ok("apply", "-n", scratch, "-f", "-", stdin=dumps(manifest("mutable", LLM_SPEC)))
    update = changed(
        LLM_SPEC,
        suspend=True,
        resumeFrom="epoch-0001",
        **{"resources.workers": 2, "training.epochs": 5, "runPolicy.maxCostUSD": 10},
    )

    kubectl.ok("apply", "-n", scratch, "-f", "-", stdin=dumps(manifest("mutable", update)))

    stored = json.loads(kubectl.ok("get", "tj", "mutable", "-n", scratch, "-o", "json"))
    assert stored["spec"]["suspend"] is True
    assert stored["spec"]["resources"]["workers"] == 2
    assert stored["metadata"]["generation"] == 2
