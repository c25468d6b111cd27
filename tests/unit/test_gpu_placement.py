"""GPU placement: the GPU resource alone decides where a worker may run, unless the catalogue
entry asks for more; GPU Feature Discovery's product label is only a preference by default."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain.api.catalogue import DEFAULT_GPU_TYPES, PRODUCT_LABEL, Catalogue
from kubetrain.api.job import TrainingJob
from kubetrain.operator.placement import PRODUCT_WEIGHT, Placement
from kubetrain.operator.render import worker_pod
from kubetrain.operator.settings import Settings


def _pod_spec(settings: Settings, gpu_type: str) -> dict[str, Any]:
    job = TrainingJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {
                "modelType": "llm",
                "dataset": {"synthetic": {}},
                "llm": {"baseModel": "random://llama-tiny"},
                "resources": {"gpuType": gpu_type, "gpusPerWorker": 2},
            },
        }
    )
    entry = settings.catalogue.get(gpu_type)
    assert entry is not None
    placement = Placement.resolve(job.spec, gpu_type, entry)
    pod = worker_pod(
        job, 0, attempt=1, resume_from="latest", placement=placement, settings=settings
    )
    spec: dict[str, Any] = pod["spec"]
    return spec


@pytest.mark.parametrize("gpu_type", sorted(k for k, v in DEFAULT_GPU_TYPES.items() if v.is_gpu))
def test_default_gpu_types_require_only_the_gpu_resource_and_prefer_their_products(
    gpu_type: str,
) -> None:
    spec = _pod_spec(Settings(), gpu_type)
    node = spec["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in node
    assert "nodeSelector" not in spec  # schedulable on any node with nvidia.com/gpu
    (preferred,) = node["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["weight"] == PRODUCT_WEIGHT
    (expression,) = preferred["preference"]["matchExpressions"]
    assert expression == {
        "key": PRODUCT_LABEL,
        "operator": "In",
        "values": DEFAULT_GPU_TYPES[gpu_type].products,
    }
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_the_cpu_type_gets_no_affinity_and_no_gpu() -> None:
    spec = _pod_spec(Settings(), "cpu")
    assert "affinity" not in spec
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"].get("limits", {})


def test_an_entry_may_require_its_products_on_a_clouds_own_label() -> None:
    catalogue = Catalogue.model_validate(
        {"gpuTypes": {"a100": {
            "products": ["nvidia-tesla-a100", "nvidia-a100-80gb"],
            "productLabel": "cloud.google.com/gke-accelerator",
            "requireProducts": True,
        }}}
    )  # fmt: skip
    spec = _pod_spec(Settings(catalogue=catalogue), "a100")
    node = spec["affinity"]["nodeAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in node
    (term,) = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{
        "key": "cloud.google.com/gke-accelerator", "operator": "In",
        "values": ["nvidia-tesla-a100", "nvidia-a100-80gb"],
    }]  # fmt: skip


@pytest.mark.parametrize(("require", "kind"), [
    (None, "requiredDuringSchedulingIgnoredDuringExecution"),  # as configured entries always did
    (True, "requiredDuringSchedulingIgnoredDuringExecution"),
    (False, "preferredDuringSchedulingIgnoredDuringExecution"),
])  # fmt: skip
def test_a_configured_entry_requires_its_products_unless_it_says_otherwise(
    require: bool | None, kind: str
) -> None:
    entry: dict[str, Any] = {"products": ["NVIDIA-L4"]}
    if require is not None:
        entry["requireProducts"] = require
    catalogue = Catalogue.model_validate({"gpuTypes": {"l4": entry}})
    node = _pod_spec(Settings(catalogue=catalogue), "l4")["affinity"]["nodeAffinity"]
    assert list(node) == [kind]


def test_an_entry_may_name_required_node_labels_instead() -> None:
    catalogue = Catalogue.model_validate(
        {"gpuTypes": {"a100": {"nodeSelector": {"k8s.amazonaws.com/accelerator": "nvidia-a100"}}}}
    )
    spec = _pod_spec(Settings(catalogue=catalogue), "a100")
    assert spec["nodeSelector"] == {"k8s.amazonaws.com/accelerator": "nvidia-a100"}
    assert "affinity" not in spec  # no products: nothing preferred


def test_an_empty_product_label_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="productLabel"):
        Catalogue.model_validate({"gpuTypes": {"a100": {"productLabel": ""}}})
