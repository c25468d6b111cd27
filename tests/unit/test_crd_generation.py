"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.api import CRD_NAME, LLMConfig, TrainingJobSpec, VisionConfig
from kubetrain.api.crd import CRD_FILENAME, build_crd, main, render_crd, write_crds
from kubetrain.api.structural import schema_problems, structural_schema, walk

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = [
    ROOT / "crds" / CRD_FILENAME,
    ROOT / "charts" / "kubetrain" / "files" / "crds" / CRD_FILENAME,
]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return dict(only)


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return dict(version["schema"]["openAPIV3Schema"])


def node(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    for key in dotted.split("."):
        schema = schema["properties"][key]
    return schema


# -- no drift ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_committed_crd_is_what_the_models_generate(path: Path) -> None:
    assert path.is_file(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render_crd(), f"{path} is stale: run `make crds` and commit it"


def test_make_crds_check_mode_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    out, chart = (str(p.parent) for p in COMMITTED)
    assert main(["--out", out, "--chart-out", chart, "--check"]) == 0
    assert capsys.readouterr().out == ""


def test_generation_is_deterministic_and_writes_both_copies(tmp_path: Path) -> None:
    assert render_crd() == render_crd()
    dirs = [tmp_path / "crds", tmp_path / "charts" / "kubetrain" / "files" / "crds"]
    assert write_crds(dirs, check=True) == [d / CRD_FILENAME for d in dirs]
    assert not dirs[0].exists()
    assert write_crds(dirs) == [d / CRD_FILENAME for d in dirs]
    assert write_crds(dirs, check=True) == []
    assert (dirs[0] / CRD_FILENAME).read_text() == (dirs[1] / CRD_FILENAME).read_text()
    (dirs[1] / CRD_FILENAME).write_text("# edited by hand\n")
    assert main(["--out", str(dirs[0]), "--chart-out", str(dirs[1]), "--check"]) == 1


def test_the_file_is_yaml_of_the_crd(crd: dict[str, Any]) -> None:
    text = render_crd()
    assert text.startswith("# Generated from the pydantic models")
    assert yaml.safe_load(text) == crd


# -- the CRD's shape ------------------------------------------------------------------------


def test_names_scope_and_subresources(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == CRD_NAME == "trainingjobs.kubetrain.io"
    spec = crd["spec"]
    assert spec["group"] == "kubetrain.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "TrainingJob",
        "listKind": "TrainingJobList",
        "plural": "trainingjobs",
        "singular": "trainingjob",
        "shortNames": ["tj"],
        "categories": ["kubetrain"],
    }
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = version["additionalPrinterColumns"]
    default = [(c["name"], c["jsonPath"]) for c in columns if not c.get("priority")]
    assert default == [
        ("Phase", ".status.phase"),
        ("Progress", ".status.progress.percentage"),
        ("Epoch", ".status.progress.currentEpoch"),
        ("Loss", ".status.metrics.currentLoss"),
        ("GPUs", ".status.resourceAllocation.summary"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    wide = {c["name"] for c in columns if c.get("priority") == 1}
    assert {"Type", "Priority", "Cost", "ETA"} <= wide


def test_printer_columns_and_selectable_fields_point_at_real_fields(
    version: dict[str, Any], schema: dict[str, Any]
) -> None:
    paths = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    paths += [f["jsonPath"] for f in version["selectableFields"]]
    for path in paths:
        if path != ".metadata.creationTimestamp":
            node(schema, path.lstrip("."))


# -- structural -----------------------------------------------------------------------------


def test_the_schema_is_structural_and_documented(schema: dict[str, Any]) -> None:
    assert schema_problems(schema) == []
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "$defs", "anyOf", "title:", "type: 'null'"):
        assert forbidden not in text
    undocumented = [
        path
        for path, n in walk(schema)
        if path and path != ".metadata" and not path.endswith("[*]") and not n.get("description")
    ]
    assert undocumented == []


def test_the_checker_catches_what_is_not_structural() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A", "description": "x"},
            "b": {"type": "string"},
            "c": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "c"},
            "d": {"type": "string", "title": "D", "description": "d", "default": None},
        },
    }
    problems = schema_problems(bad)
    assert ".a: has $ref" in problems
    assert ".a: has no type" in problems
    assert ".b: has no description" in problems
    assert ".c: has anyOf" in problems
    assert ".d: has title" in problems
    assert ".d: has default null" in problems


def test_spec_nulls_are_pruned_and_status_nulls_kept(schema: dict[str, Any]) -> None:
    """Spec: a null is pruned so CEL's has() sees the field as absent. Status: nullable."""
    spec, status = node(schema, "spec"), node(schema, "status")
    assert not [p for p, n in walk(spec) if "nullable" in n]
    assert node(status, "latestCheckpoint")["nullable"] is True
    assert node(status, "progress")["nullable"] is True
    assert "nullable" not in node(status, "conditions")


def test_spec_defaults_are_in_the_schema_and_status_has_none(schema: dict[str, Any]) -> None:
    assert node(schema, "spec.resources.workers")["default"] == 1
    assert node(schema, "spec.priority")["default"] == "normal"
    assert node(schema, "spec.training")["default"] == {}
    assert "Defaults to 1." in node(schema, "spec.resources.workers")["description"]
    assert not [p for p, n in walk(node(schema, "status")) if "default" in n]


@pytest.mark.parametrize(
    ("path", "minimum", "maximum"),
    [
        ("spec.resources.workers", 1, 32),
        ("spec.training.epochs", 1, None),
        ("spec.training.batchSize", 1, None),
        ("spec.llm.lora.rank", 1, None),
        ("spec.llm.lora.dropout", 0, 1),
    ],
)
def test_bounds_are_in_the_schema(
    schema: dict[str, Any], path: str, minimum: int, maximum: int | None
) -> None:
    field = node(schema, path)
    assert field["minimum"] == minimum
    if maximum is not None:
        assert field["maximum"] == maximum


def test_the_exclusive_bound_uses_the_openapi_v3_0_spelling(schema: dict[str, Any]) -> None:
    dropout = node(schema, "spec.llm.lora.dropout")
    assert (dropout["maximum"], dropout["exclusiveMaximum"]) == (1, True)


def test_fractional_bounds_are_checked_in_cel(schema: dict[str, Any]) -> None:
    """The API server casts a fractional bound to int when the input is an integer."""
    lr = node(schema, "spec.training.learningRate")
    assert "minimum" not in lr and "maximum" not in lr
    assert lr["x-kubernetes-validations"] == [
        {
            "rule": "self >= 1e-06 && self <= 0.1",
            "message": "spec.training.learningRate must be at least 1e-06 and at most 0.1",
        }
    ]


def test_list_semantics(schema: dict[str, Any]) -> None:
    conditions = node(schema, "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    }
    assert node(schema, "status.checkpoints")["x-kubernetes-list-map-keys"] == ["id"]
    assert node(schema, "spec.env")["x-kubernetes-list-map-keys"] == ["name"]


def test_gpu_type_is_a_free_string_checked_by_the_operator(schema: dict[str, Any]) -> None:
    gpu = node(schema, "spec.resources.gpuType")
    assert gpu["type"] == "string" and "enum" not in gpu


def test_quantities_are_int_or_string(schema: dict[str, Any]) -> None:
    for path in ("spec.resources.cpu", "spec.resources.memory", "spec.checkpoint.size"):
        q = node(schema, path)
        assert q["x-kubernetes-int-or-string"] is True and "type" not in q
        assert "isQuantity" in q["x-kubernetes-validations"][0]["rule"]


# -- CEL rules ------------------------------------------------------------------------------


def rules(n: dict[str, Any]) -> list[dict[str, str]]:
    return list(n.get("x-kubernetes-validations", []))


def test_cross_field_rules_come_from_the_models(schema: dict[str, Any]) -> None:
    spec_rules = rules(node(schema, "spec"))
    assert [r["message"] for r in spec_rules] == [r.message for r in TrainingJobSpec.cel_rules]
    assert [r["message"] for r in rules(node(schema, "spec.llm"))] == [
        r.message for r in LLMConfig.cel_rules
    ]
    messages = " ".join(r["message"] for r in spec_rules)
    for needed in (
        "spec.llm is required",
        "spec.vision is required",
        "spec.image and spec.command",
    ):
        assert needed in messages


@pytest.mark.parametrize(
    "path",
    ["spec.modelType", "spec.dataset", "spec.llm.baseModel", "spec.vision.architecture"],
)
def test_immutable_fields_have_transition_rules(schema: dict[str, Any], path: str) -> None:
    (transition,) = [r for r in rules(node(schema, path)) if "oldSelf" in r["rule"]]
    assert transition["rule"] == "self == oldSelf"
    assert transition["message"].startswith(f"{path} is immutable")


def test_the_name_rule_is_on_the_root(schema: dict[str, Any]) -> None:
    root_rules = [r["rule"] for r in rules(schema)]
    assert "size(self.metadata.name) <= 48" in root_rules
    assert any("self.metadata.name.matches" in r for r in root_rules)


def test_every_message_names_a_field(schema: dict[str, Any]) -> None:
    generic = {
        "must be a positive Kubernetes quantity such as 500m, 2 or 16Gi",
        "must be a relative path without '..' segments",
    }  # attached to the field itself, so the API server prefixes the field's path
    for path, n in walk(schema):
        for rule in rules(n):
            if rule["message"] not in generic:
                assert any(
                    w in rule["message"] for w in ("spec.", "metadata.", "valueFrom", "env:")
                ), (
                    path,
                    rule,
                )


def test_model_sections_have_their_own_schema() -> None:
    """Sub-models convert on their own too (used by the SDK and the docs later)."""
    for model in (LLMConfig, VisionConfig):
        assert schema_problems(structural_schema(model, "spec.x")) == []
