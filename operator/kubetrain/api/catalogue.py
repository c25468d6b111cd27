"""The GPU catalogue: what each ``resources.gpuType`` means on this cluster.

Each entry says how to land a Pod on that hardware (the extended resource to request,
tolerations, node labels) and what it costs per GPU-hour. Platform teams replace or extend
the defaults with a YAML file.

A GPU Pod is placed by its ``nvidia.com/gpu`` request alone unless its entry asks for more:
the built-in entries name their products on the label NVIDIA GPU Feature Discovery sets
(``nvidia.com/gpu.product``) only as a *preference*, so clusters without GFD (most managed
clusters) still schedule every default GPU type, and clusters with it still put an A100 job
on A100 nodes. An entry a platform team configures requires its ``products`` (on
``productLabel``), as it always did, unless it says ``requireProducts: false``; and
``nodeSelector`` (e.g. a cloud's own accelerator label) is always required.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubetrain.api.spec import VisionPipeline

if TYPE_CHECKING:
    from kubetrain.api.spec import TrainingJobSpec

PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"


class GPUType(BaseModel):
    """One kind of accelerator (or ``cpu``) that jobs may ask for."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    description: str = ""
    products: list[str] = Field(
        default_factory=list,
        description=(
            "Values of the productLabel node label, any of which matches: preferred nodes, "
            "or the only nodes allowed with requireProducts."
        ),
    )
    product_label: str = Field(
        default=PRODUCT_LABEL,
        min_length=1,
        description=(
            "The node label products are values of (GPU Feature Discovery's by default; e.g. "
            "GKE's cloud.google.com/gke-accelerator)."
        ),
    )
    require_products: bool = Field(
        default=True,
        description=(
            "Only nodes whose productLabel is one of products (required node affinity); "
            "false: those nodes are preferred, any node with the GPU resource will do (the "
            "built-in entries)."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a worker's node must carry (required)."
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resource_name: str | None = Field(
        default=GPU_RESOURCE, description="Extended resource to request; null for CPU-only."
    )
    memory_gib: float = Field(default=0, ge=0, description="Memory of one GPU, in GiB.")
    worker_cpu: str | None = Field(
        default=None, description="CPU each worker requests when the job does not say."
    )
    worker_memory: str | None = Field(
        default=None, description="Memory each worker requests when the job does not say."
    )
    price_per_hour: float = Field(
        default=0, ge=0, description="USD per GPU-hour (per worker-hour for CPU-only types)."
    )

    @property
    def is_gpu(self) -> bool:
        return self.resource_name is not None


_GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def _gpu(description: str, products: list[str], memory_gib: float, price: float) -> GPUType:
    return GPUType(
        description=description,
        products=products,
        require_products=False,  # GFD may not run: its label only steers, never blocks
        tolerations=[dict(_GPU_TOLERATION)],
        memory_gib=memory_gib,
        worker_cpu="8",
        worker_memory="64Gi",
        price_per_hour=price,
    )


DEFAULT_GPU_TYPES: dict[str, GPUType] = {
    "h200": _gpu("NVIDIA H200 141GB", ["NVIDIA-H200", "NVIDIA-H200-NVL"], 141, 5.50),
    "h100": _gpu(
        "NVIDIA H100 80GB",
        ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"],
        80,
        4.50,
    ),
    "a100": _gpu(
        "NVIDIA A100 40/80GB",
        [
            "NVIDIA-A100-SXM4-80GB",
            "NVIDIA-A100-SXM4-40GB",
            "NVIDIA-A100-80GB-PCIe",
            "NVIDIA-A100-PCIE-40GB",
        ],
        80,
        3.00,
    ),
    "l4": _gpu("NVIDIA L4 24GB", ["NVIDIA-L4"], 24, 0.80),
    "a10g": _gpu("NVIDIA A10G 24GB", ["NVIDIA-A10G"], 24, 1.20),
    "v100": _gpu(
        "NVIDIA V100 16/32GB",
        [
            "Tesla-V100-SXM2-16GB",
            "Tesla-V100-SXM2-32GB",
            "Tesla-V100-PCIE-16GB",
            "Tesla-V100-PCIE-32GB",
        ],
        32,
        2.50,
    ),
    "rtx4090": _gpu("NVIDIA GeForce RTX 4090 24GB", ["NVIDIA-GeForce-RTX-4090"], 24, 0.70),
    "cpu": GPUType(
        description="CPU only",
        resource_name=None,
        worker_cpu="1",
        worker_memory="2Gi",
        price_per_hour=0.10,
    ),
}


class Catalogue(BaseModel):
    """The GPU types this operator knows, by the key users write in ``gpuType``.

    Entries given in configuration are laid over the defaults (same key replaces);
    ``replaceDefaults: true`` drops the defaults altogether.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    gpu_types: dict[str, GPUType] = Field(default_factory=dict)
    replace_defaults: bool = False
    default_type: str = Field(
        default="a100",
        description=(
            "The gpuType of jobs that do not name one (vision pipelines default to their own "
            "tier when the catalogue has it)."
        ),
    )

    pipeline_gpu_types: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "The gpuType a vision pipeline's jobs get when they name none, by pipeline, over "
            "the built-in tiers (a10g; a100 for detectron2 and the large RF-DETRs)."
        ),
    )

    @model_validator(mode="after")
    def _over_defaults(self) -> Catalogue:
        if not self.replace_defaults:
            self.gpu_types = DEFAULT_GPU_TYPES | self.gpu_types
        unknown = sorted(set(self.pipeline_gpu_types) - {p.value for p in VisionPipeline})
        if unknown:
            raise ValueError(
                f"pipelineGpuTypes: {', '.join(unknown)} is not a vision pipeline; the "
                f"pipelines are {', '.join(p.value for p in VisionPipeline)}"
            )
        return self

    def get(self, key: str) -> GPUType | None:
        return self.gpu_types.get(key)

    def gpu_type_for(self, spec: TrainingJobSpec) -> str:
        """The gpuType a job runs on: its own, else its vision pipeline's tier (configured
        here or built in) when this catalogue has that type, else the catalogue's default."""
        if spec.resources.gpu_type:
            return spec.resources.gpu_type
        vision = spec.vision
        if vision is None or vision.pipeline is None:
            return self.default_type
        tier = self.pipeline_gpu_types.get(vision.pipeline.value) or vision.default_gpu_type()
        return tier if tier in self.gpu_types else self.default_type

    @property
    def names(self) -> list[str]:
        return sorted(self.gpu_types)
