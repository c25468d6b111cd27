"""The desired state of a TrainingJob: what to train, on what data, on which hardware.

Defaults and bounds live here and nowhere else: the CRD schema is generated from these
models, and the operator validates every object with them before acting on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from kubetrain.api.base import Cel, SpecModel, emit_model_rules, immutable

GPU_TYPE_CPU = "cpu"

# Kubernetes resource.Quantity, as the API server parses it.
QUANTITY_PATTERN = re.compile(
    r"^(?P<sign>[+-])?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)


def _positive_quantity(value: object) -> str:
    """An int-or-string quantity as a string; malformed or non-positive ones are rejected."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2 or 16Gi")
    match = QUANTITY_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (such as 500m, 2 or 16Gi)")
    if match["sign"] == "-" or float(match["number"]) == 0:
        raise ValueError(f"{text!r} must be a positive quantity")
    return text


Quantity = Annotated[
    str,
    BeforeValidator(_positive_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "isQuantity(string(self)) && "
                    "quantity(string(self)).isGreaterThan(quantity('0'))",
                    "message": "must be a positive Kubernetes quantity such as 500m, 2 or 16Gi",
                }
            ],
        }
    ),
]
"""A positive Kubernetes quantity (CPU, memory, storage size); integers or strings on the wire."""

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]


def _is_relative_path(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


RelativePath = Annotated[
    str,
    Field(max_length=1024),
    Cel(
        rule="!self.startsWith('/') && !self.split('/').exists(p, p == '..')",
        message="must be a relative path without '..' segments",
        check=_is_relative_path,
    ),
]


class ModelType(StrEnum):
    """What kind of model a job trains; it selects the trainer and the config section it needs."""

    LLM = "llm"
    VISION = "vision"
    MULTIMODAL = "multimodal"
    CUSTOM = "custom"


class Priority(StrEnum):
    """Scheduling priority, mapped to a PriorityClass by the operator."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Strategy(StrEnum):
    """How an LLM is fine-tuned."""

    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class VisionTask(StrEnum):
    """What a vision model predicts."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    INSTANCE_SEGMENTATION = "instanceSegmentation"
    SEMANTIC_SEGMENTATION = "semanticSegmentation"


class VisionPipeline(StrEnum):
    """The managed-training pipelines a vision job can name instead of a task and model."""

    CLASSIFICATION = "classification"
    SM_PYTORCH = "sm_pytorch"
    DETECTRON2 = "detectron2"
    RFDETR_DETECTION = "rfdetr_detection"
    RFDETR_SEGMENTATION = "rfdetr_segmentation"
    YOLOX = "yolox"


@dataclass(frozen=True)
class PipelineDefaults:
    """What a pipeline fills in when the spec leaves it out: the task, the model, the GPU."""

    task: VisionTask
    architecture: str
    gpu_type: str
    large_gpu_type: str = ""
    large: tuple[str, ...] = ()
    """Architectures (name suffixes) that default to ``large_gpu_type`` instead."""
    learning_rate: float | None = None
    """The learning rate when the spec sets none (None: the model type's)."""

    def gpu_type_for(self, architecture: str) -> str:
        if self.large_gpu_type and architecture.lower().endswith(self.large):
            return self.large_gpu_type
        return self.gpu_type


_RFDETR_LARGE = ("_large", "_xlarge", "_2xlarge")
PIPELINES: dict[VisionPipeline, PipelineDefaults] = {
    VisionPipeline.CLASSIFICATION: PipelineDefaults(VisionTask.CLASSIFICATION, "resnet50", "a10g"),
    VisionPipeline.SM_PYTORCH: PipelineDefaults(
        VisionTask.SEMANTIC_SEGMENTATION, "smp_unet_resnet34", "a10g"
    ),
    VisionPipeline.DETECTRON2: PipelineDefaults(
        VisionTask.INSTANCE_SEGMENTATION, "maskrcnn_resnet50_fpn", "a100"
    ),
    VisionPipeline.RFDETR_DETECTION: PipelineDefaults(
        VisionTask.DETECTION, "rfdetr_small", "a10g", "a100", _RFDETR_LARGE, 1e-4
    ),
    VisionPipeline.RFDETR_SEGMENTATION: PipelineDefaults(
        VisionTask.INSTANCE_SEGMENTATION, "rfdetr_seg_small", "a10g", "a100", _RFDETR_LARGE, 1e-4
    ),
    VisionPipeline.YOLOX: PipelineDefaults(VisionTask.DETECTION, "fcos_cspdarknet_s", "a10g"),
}
"""Each pipeline's task, default architecture and GPU tier (a10g; a100 for Mask R-CNN and
the large RF-DETRs), as the managed-training API they come from defaults them."""


class MixedPrecision(StrEnum):
    """Numeric precision of activations and gradients during training."""

    FP16 = "fp16"
    BF16 = "bf16"
    NONE = "none"


class DatasetFormat(StrEnum):
    """How the dataset's files are laid out."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"
    TEXT = "text"
    IMAGEFOLDER = "imagefolder"
    COCO = "coco"
    YOLO = "yolo"
    VOC = "voc"


class ExportFormat(StrEnum):
    """Formats a trained vision model can be exported to."""

    ONNX = "onnx"


class AccessMode(StrEnum):
    """PersistentVolumeClaim access modes that suit a checkpoint volume."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"
    READ_WRITE_MANY = "ReadWriteMany"


# -- dataset ---------------------------------------------------------------------------------


class PVCDataset(SpecModel):
    """Training data on a PersistentVolumeClaim in the job's namespace, mounted read-only."""

    claim_name: ObjectName = Field(
        description="Name of the PersistentVolumeClaim that holds the data, in the job's namespace."
    )
    sub_path: RelativePath | None = Field(
        default=None,
        description="Directory or file inside the volume to train on. Unset: the volume's root.",
    )


REMOTE_URI = r"^(s3|gs|https|hf)://[^\s]+$"


class SourceCredentials(SpecModel):
    """A Secret in the job's namespace with what it takes to read a remote source."""

    secret_name: ObjectName = Field(
        description=(
            "Name of the Secret. Keys it may hold: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL for an S3-compatible store) "
            "for s3://; service-account.json for gs://; HF_TOKEN (and HF_ENDPOINT) for the "
            "Hugging Face Hub. Mounted into the fetch Pod only; never copied into status, "
            "Events or logs."
        )
    )


class CacheConfig(SpecModel):
    """Where fetched datasets and models are kept, for every attempt of the job."""

    claim_name: ObjectName = Field(
        description=(
            "An existing PersistentVolumeClaim in the job's namespace that holds fetched "
            "datasets and base models. Jobs that name the same claim share it: what one "
            "fetched, the others reuse (ReadWriteMany for jobs running at once)."
        )
    )


class OutputConfig(SpecModel):
    """Where the trained model is published when the job completes."""

    uri: str = Field(
        max_length=2048,
        pattern=r"^((s3|gs)://[^/\s]+(/[^\s]*)?|hf://[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?)$",
        description=(
            "s3://bucket/prefix, gs://bucket/prefix or hf://org/name[@branch] (a Hugging Face "
            "Hub model repo, created private if missing): on completion rank 0 uploads the "
            "result (the LoRA adapter or weights, the vision model, its ONNX export and label "
            "map) there; status.model.uri (a hub URI names the commit), sizeBytes and digest "
            "then say where it is. The result stays on the checkpoint volume too."
        ),
    )
    credentials: SourceCredentials | None = Field(
        default=None,
        description=(
            "The Secret to upload with: the AWS_* keys for s3://, service-account.json for "
            "gs://, HF_TOKEN (write access) and HF_ENDPOINT for hf://."
        ),
    )


class SyntheticDataset(SpecModel):
    """A small generated dataset (deterministic from the seed), for smoke tests and demos."""

    samples: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Number of generated training samples.",
    )


class DatasetSource(SpecModel):
    """Where the training data is: exactly one of pvc, uri or synthetic."""

    cel_rules = (
        Cel(
            rule="(has(self.pvc) ? 1 : 0) + (has(self.uri) ? 1 : 0) "
            "+ (has(self.synthetic) ? 1 : 0) == 1",
            message="spec.dataset must set exactly one of pvc, uri or synthetic",
            check=lambda d: sum(x is not None for x in (d.pvc, d.uri, d.synthetic)) == 1,
        ),
        Cel(
            rule="!has(self.credentials) || has(self.uri)",
            message="spec.dataset.credentials is only for a spec.dataset.uri",
            check=lambda d: d.credentials is None or d.uri is not None,
            field_path=".credentials",
            reason="FieldValueForbidden",
        ),
    )

    pvc: PVCDataset | None = Field(
        default=None, description="Data on a PersistentVolumeClaim in the job's namespace."
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=REMOTE_URI,
        description=(
            "Remote location of the data: s3://bucket/prefix (or one object), "
            "gs://bucket/prefix, https://host/file or hf://datasets/<org>/<name>[@revision] "
            "(a Hugging Face Hub dataset). Fetched once before the first attempt into the "
            "cache (spec.cache, else the checkpoint volume); every attempt reads that copy."
        ),
    )
    credentials: SourceCredentials | None = Field(
        default=None, description="The Secret to read spec.dataset.uri with."
    )
    synthetic: SyntheticDataset | None = Field(
        default=None,
        description=(
            "Generate a small dataset instead of reading one; nothing is downloaded. "
            "For smoke tests and demos."
        ),
    )
    format: DatasetFormat | None = Field(
        default=None,
        description=(
            "Layout of the data: jsonl, json, csv, parquet or text for language models; "
            "imagefolder, coco, yolo or voc for vision. Unset: inferred from the files "
            "(or the hub dataset's own format)."
        ),
    )


# -- model sections -------------------------------------------------------------------------


class LoRAConfig(SpecModel):
    """Low-rank adapter settings for the lora and qlora strategies."""

    rank: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="LoRA rank r: the inner dimension of the low-rank update matrices (>= 1).",
    )
    alpha: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="LoRA alpha: the update is scaled by alpha / rank.",
    )
    dropout: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Dropout probability on the adapter's input, in [0, 1).",
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Names of the modules that get adapters, e.g. q_proj, k_proj, v_proj, o_proj. "
            "Empty: the PEFT default for the base model's architecture."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class LLMConfig(SpecModel):
    """What to fine-tune for modelType llm (and the language side of multimodal)."""

    cel_rules = (
        Cel(
            rule="!has(self.lora) || !has(self.strategy) || self.strategy != 'full'",
            message="spec.llm.lora must not be set when spec.llm.strategy is full",
            check=lambda c: c.lora is None or c.strategy is not Strategy.FULL,
            field_path=".lora",
            reason="FieldValueForbidden",
        ),
    )

    base_model: Annotated[
        str,
        Field(min_length=1, max_length=512),
        immutable("spec.llm.baseModel", "checkpoints only fit the model they were trained from"),
    ] = Field(
        description=(
            "The pretrained model to start from: a Hugging Face Hub id such as "
            "meta-llama/Llama-2-7b-hf[@revision], a URI (s3://, gs://, https://, "
            "hf://<org>/<name>), or a directory on a mounted volume. A hub id or URI is "
            "fetched once into the cache before the first attempt. Immutable."
        ),
    )
    credentials: SourceCredentials | None = Field(
        default=None,
        description="The Secret to fetch spec.llm.baseModel with (HF_TOKEN for a gated model).",
    )
    strategy: Strategy = Field(
        default=Strategy.LORA,
        description=(
            "lora trains low-rank adapters; qlora does the same on a 4-bit quantised base "
            "model; full trains every weight."
        ),
    )
    lora: LoRAConfig | None = Field(
        default=None,
        description=(
            "Adapter settings for the lora and qlora strategies. Unset: rank 8, alpha 16, "
            "dropout 0.05, the architecture's default target modules. Not allowed with full."
        ),
    )
    max_seq_length: int = Field(
        default=512,
        ge=16,
        le=131_072,
        description="Longest token sequence per sample; longer samples are truncated.",
    )

    def effective_lora(self) -> LoRAConfig | None:
        """The adapter settings a lora or qlora run uses (defaults when unset); None for full."""
        if self.strategy is Strategy.FULL:
            return None
        return self.lora or LoRAConfig()


class InputSize(SpecModel):
    """Size, in pixels, images are resized to before they enter the model."""

    width: int = Field(ge=16, le=8192, description="Width in pixels.")
    height: int = Field(ge=16, le=8192, description="Height in pixels.")


class Augmentation(SpecModel):
    """Training-time image augmentation; each probability or gain is 0 (off) unless set."""

    mixup: float = Field(default=0.0, ge=0, le=1, description="Probability of MixUp.")
    copy_paste: float = Field(
        default=0.0, ge=0, le=1, description="Probability of copy-paste (segment pasting)."
    )
    mosaic: float = Field(default=0.0, ge=0, le=1, description="Probability of mosaic tiling.")
    hsv_h: float = Field(default=0.0, ge=0, le=1, description="Hue jitter, as a fraction.")
    hsv_s: float = Field(default=0.0, ge=0, le=1, description="Saturation jitter, as a fraction.")
    hsv_v: float = Field(
        default=0.0, ge=0, le=1, description="Value (brightness) jitter, as a fraction."
    )
    horizontal_flip: float = Field(
        default=0.0, ge=0, le=1, description="Probability of a left-right flip."
    )
    vertical_flip: float = Field(
        default=0.0, ge=0, le=1, description="Probability of an up-down flip."
    )
    degrees: float = Field(default=0.0, ge=0, le=180, description="Maximum rotation, in degrees.")
    translate: float = Field(
        default=0.0, ge=0, le=1, description="Maximum translation, as a fraction of the image size."
    )
    scale: float = Field(
        default=0.0, ge=0, le=1, description="Maximum scale change, as a fraction (0.5: 50%-150%)."
    )


class ExportConfig(SpecModel):
    """Export of the trained vision model for inference."""

    format: ExportFormat = Field(default=ExportFormat.ONNX, description="Export format.")
    opset: int = Field(default=17, ge=7, le=23, description="ONNX opset version.")
    dynamic_batch: bool = Field(
        default=False, description="Export with a dynamic batch dimension instead of batch 1."
    )


def _pipeline_task_rule() -> str:
    tasks = ", ".join(f"'{p.value}': '{d.task.value}'" for p, d in PIPELINES.items())
    return f"!has(self.pipeline) || !has(self.task) || {{{tasks}}}[self.pipeline] == self.task"


VISION_MODEL_REQUIRED = (
    "spec.vision needs a pipeline, or a task and an architecture "
    "(spec.vision.task and spec.vision.architecture)"
)


def _vision_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """task and architecture may be left to the pipeline: not required on the wire."""
    emit_model_rules(schema, cls)
    schema["required"] = [
        r for r in schema.get("required", []) if r not in ("task", "architecture")
    ]
    if not schema["required"]:
        del schema["required"]


class VisionConfig(SpecModel):
    """What to train for modelType vision: a pipeline, or a task and an architecture."""

    model_config = SpecModel.model_config | {"json_schema_extra": _vision_schema}

    cel_rules = (
        Cel(
            rule="has(self.pipeline) || (has(self.task) && has(self.architecture))",
            message=VISION_MODEL_REQUIRED,
            check=lambda v: v.pipeline is not None or bool(v.architecture),
            reason="FieldValueRequired",
        ),
        Cel(
            rule=_pipeline_task_rule(),
            message=(
                "spec.vision.task does not match spec.vision.pipeline: "
                + ", ".join(f"{p.value} trains {d.task.value}" for p, d in PIPELINES.items())
            ),
            check=lambda v: v.pipeline is None or PIPELINES[v.pipeline].task is v.task,
            field_path=".task",
            reason="FieldValueInvalid",
        ),
    )

    pipeline: Annotated[
        VisionPipeline | None,
        immutable("spec.vision.pipeline", "checkpoints only fit the model they came from"),
    ] = Field(
        default=None,
        description=(
            "A managed-training pipeline by name: classification (torchvision classifiers), "
            "sm_pytorch (semantic segmentation on segmentation-models-pytorch), detectron2 "
            "(instance segmentation, Mask R-CNN from torchvision), rfdetr_detection and "
            "rfdetr_segmentation (RF-DETR, the rfdetr package), yolox (an anchor-free "
            "one-stage detector on YOLOX's CSP-Darknet backbone; see docs/vision.md). It sets "
            "task and the default architecture, and the default gpuType (a10g; a100 for "
            "detectron2 and the large RF-DETRs). Immutable."
        ),
    )
    task: VisionTask = Field(
        description=(
            "What the model predicts: classification, detection, instanceSegmentation or "
            "semanticSegmentation. Unset: the pipeline's."
        )
    )
    architecture: Annotated[
        str,
        Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
        immutable(
            "spec.vision.architecture", "checkpoints only fit the architecture they came from"
        ),
    ] = Field(
        description=(
            "Model architecture the trainer builds, e.g. resnet18, fcos_resnet50_fpn, "
            "fasterrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn, deeplabv3, "
            "smp_unet_resnet34, rfdetr_small, rfdetr_seg_small, fcos_cspdarknet_s. An unknown "
            "name fails the job with the list of supported ones. Unset: the pipeline's "
            "default. Immutable."
        )
    )
    pretrained: bool = Field(
        default=True,
        description=(
            "Start from pretrained weights: spec.vision.pretrainedWeights, else the file named "
            "by the KUBETRAIN_PRETRAINED_WEIGHTS env var; false: random init."
        ),
    )
    pretrained_weights: str | None = Field(
        default=None,
        max_length=2048,
        pattern=REMOTE_URI,
        description=(
            "A state dict (.pth) to start from, at s3://, gs://, https:// or hf://; fetched "
            "once into the cache before the first attempt."
        ),
    )
    credentials: SourceCredentials | None = Field(
        default=None, description="The Secret to fetch spec.vision.pretrainedWeights with."
    )
    input_size: InputSize | None = Field(
        default=None,
        description="Size images are resized to. Unset: the architecture's default.",
    )
    num_classes: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Number of classes. Unset: taken from the dataset's labels.",
    )
    augmentation: Augmentation | None = Field(
        default=None, description="Training-time augmentation. Unset: none."
    )
    export: ExportConfig | None = Field(
        default=None,
        description="Export the final model (ONNX) next to the checkpoints. Unset: no export.",
    )

    @model_validator(mode="before")
    @classmethod
    def _pipeline_defaults(cls, data: Any) -> Any:
        """Fill task and architecture from the pipeline when the spec leaves them out."""
        if not isinstance(data, dict):
            return data
        if data.get("pipeline") is None:
            if data.get("task") is None or data.get("architecture") is None:
                raise ValueError(VISION_MODEL_REQUIRED)
            return data
        try:
            defaults = PIPELINES[VisionPipeline(data["pipeline"])]
        except ValueError:
            return data  # the field's own validation names the bad value
        filled = dict(data)
        filled.setdefault("task", defaults.task.value)
        filled.setdefault("architecture", defaults.architecture)
        return filled

    def default_gpu_type(self) -> str | None:
        """The pipeline's GPU tier for this architecture; None without a pipeline."""
        if self.pipeline is None:
            return None
        return PIPELINES[self.pipeline].gpu_type_for(self.architecture)


# -- training, hardware, lifecycle ------------------------------------------------------------


class EarlyStopping(SpecModel):
    """Stop before the last epoch once the loss stops improving."""

    patience: int = Field(
        ge=1, le=1000, description="Epochs without improvement after which training stops."
    )
    min_delta: float = Field(
        default=0.0,
        ge=0,
        description="Smallest decrease of the loss that counts as an improvement.",
    )


DEFAULT_LEARNING_RATE = {
    ModelType.LLM: 2e-4,
    ModelType.MULTIMODAL: 2e-4,
    ModelType.VISION: 1e-2,
}
"""The learning rate a trainer uses when spec.training.learningRate is unset."""


class Tracker(StrEnum):
    """An experiment tracker a trainer can report to."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class TrainingParams(SpecModel):
    """The optimisation loop: epochs, batch size, learning-rate schedule, regularisation."""

    epochs: int = Field(
        default=3, ge=1, le=10_000, description="Passes over the training data (>= 1)."
    )
    report_to: list[Tracker] = Field(
        default_factory=list,
        max_length=3,
        description=(
            "Experiment trackers the trainer also reports every step's metrics to: "
            "tensorboard (event files in tensorboard/ on the checkpoint volume), mlflow "
            "(one run per job at MLFLOW_TRACKING_URI, set with spec.env; "
            "MLFLOW_EXPERIMENT_NAME or the namespace names the experiment) and wandb (one "
            "Weights & Biases run per job: WANDB_API_KEY from a Secret in spec.env, "
            "WANDB_PROJECT or the namespace, WANDB_BASE_URL for a self-hosted server; "
            "WANDB_MODE=offline keeps it on the checkpoint volume). A resumed attempt "
            "continues the same run. Empty: none."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        le=65_536,
        description="Samples per step on each worker, before gradient accumulation (>= 1).",
    )
    learning_rate: float | None = Field(
        default=None,
        ge=1e-6,
        le=1e-1,
        description=(
            "Peak learning rate, between 1e-6 and 1e-1. Unset: 2e-4 for llm and "
            "multimodal, 1e-2 for vision (1e-4 for the RF-DETR pipelines)."
        ),
    )
    weight_decay: float = Field(
        default=0.0, ge=0, le=1, description="Decoupled weight decay, between 0 and 1."
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="Steps over which the learning rate ramps up from 0 to its peak.",
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Steps whose gradients are summed before each optimiser update (>= 1).",
    )
    momentum: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Momentum for SGD-style optimisers, in [0, 1). Unset: the trainer's default.",
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=2**32 - 1,
        description="Random seed for data order, initialisation and augmentation.",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop early when the loss stops improving. Unset: never."
    )


class OptimizationConfig(SpecModel):
    """Speed and memory trade-offs that do not change what is learned."""

    mixed_precision: MixedPrecision = Field(
        default=MixedPrecision.NONE,
        description="fp16 or bf16 autocast on GPUs; none trains in fp32 (the only choice on cpu).",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass to save memory (slower).",
    )
    max_grad_norm: float = Field(
        default=1.0,
        ge=0,
        le=10_000,
        description="Clip the gradient norm to this value; 0 disables clipping.",
    )


class ResourcesConfig(SpecModel):
    """The hardware a job runs on: GPU type, GPUs per worker, workers, CPU and memory."""

    gpu_type: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=(
            "A key of the operator's GPU catalogue (e.g. a100, h100, v100, rtx4090, a10g, l4), "
            "or cpu to run without GPUs. The operator rejects keys its catalogue lacks. "
            "Unset: the vision pipeline's tier (a10g; a100 for detectron2 and large RF-DETRs) "
            "when the catalogue has it, else the catalogue's default."
        ),
    )
    gpus_per_worker: int = Field(
        default=1, ge=1, le=16, description="GPUs each worker Pod requests. Ignored for cpu."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Worker Pods that train together (data parallel), between 1 and 32.",
    )
    cpu: Quantity | None = Field(
        default=None,
        description="CPU each worker requests, e.g. 8 or 500m. Unset: the catalogue's value.",
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            "Memory each worker requests and is limited to, e.g. 64Gi. "
            "Unset: the catalogue's value."
        ),
    )


class CheckpointConfig(SpecModel):
    """Where checkpoints are kept and how often they are written."""

    size: Quantity = Field(
        default="10Gi",
        description="Size of the checkpoint PersistentVolumeClaim the operator creates.",
    )
    storage_class_name: ObjectName | None = Field(
        default=None,
        description="StorageClass of the checkpoint claim. Unset: the cluster's default.",
    )
    access_modes: list[AccessMode] = Field(
        default_factory=list,
        max_length=3,
        description=(
            "Access modes of the checkpoint claim. Empty: ReadWriteOnce for one worker, "
            "ReadWriteMany for several."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    existing_claim_name: ObjectName | None = Field(
        default=None,
        description=(
            "Use this existing PersistentVolumeClaim instead of creating one; size, "
            "storageClassName and accessModes are then ignored. The operator never deletes it."
        ),
    )
    interval_epochs: int = Field(
        default=1, ge=1, le=10_000, description="Write a checkpoint every this many epochs."
    )
    interval_steps: int | None = Field(
        default=None,
        ge=1,
        description="Also write a checkpoint every this many steps. Unset: only at epoch ends.",
    )
    keep_last: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Checkpoints kept on the volume; older ones are deleted.",
    )


class KeySelector(SpecModel):
    """A key of a Secret or ConfigMap in the job's namespace."""

    name: ObjectName = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The key whose value becomes the variable's value.",
    )
    optional: bool = Field(
        default=False, description="Start the Pods even when the key or object is missing."
    )


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from: exactly one source."""

    cel_rules = (
        Cel(
            rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="valueFrom must set exactly one of secretKeyRef or configMapKeyRef",
            check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    )

    secret_key_ref: KeySelector | None = Field(
        default=None, description="A key of a Secret (e.g. a Hugging Face or S3 token)."
    )
    config_map_key_ref: KeySelector | None = Field(
        default=None, description="A key of a ConfigMap."
    )


class EnvVar(SpecModel):
    """An environment variable for every worker container."""

    cel_rules = (
        Cel(
            rule="!(has(self.value) && has(self.valueFrom))",
            message="env: value and valueFrom are mutually exclusive",
            check=lambda e: e.value is None or e.value_from is None,
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Variable name.",
    )
    value: str | None = Field(default=None, max_length=32_768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key."
    )


class RunPolicy(SpecModel):
    """Limits on retries, run time, cost and how long a finished job is kept."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description=(
            "Trainer failures tolerated before the job is Failed (a worker evicted for "
            "filling its own /tmp is one). Pods lost to preemption, eviction or node failure "
            "are recreated and counted against maxRestarts instead."
        ),
    )
    max_restarts: int = Field(
        default=30,
        ge=0,
        le=10_000,
        description=(
            "Restarts after lost workers (preemption, eviction, node failure) tolerated "
            "before the job is Failed with RestartLimitExceeded; Kueue's preemptions are "
            "not counted (the job waits in its queue instead)."
        ),
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Fail the job when it has run this long (suspended time excluded). Unset: no limit."
        ),
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the job this long after it Completed or Failed. Unset: keep it.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Stop the job (after a checkpoint) when its estimated cost reaches this many US "
            "dollars. Unset: no limit."
        ),
    )


def _section_allowed(
    spec: TrainingJobSpec, allowed: tuple[ModelType, ...], section: object
) -> bool:
    return section is None or spec.model_type in allowed


class TrainingJobSpec(SpecModel):
    """Desired state of a TrainingJob."""

    cel_rules = (
        Cel(
            rule="self.modelType != 'llm' || has(self.llm)",
            message="spec.llm is required when spec.modelType is llm",
            check=lambda s: s.model_type is not ModelType.LLM or s.llm is not None,
            field_path=".llm",
            reason="FieldValueRequired",
        ),
        Cel(
            rule="self.modelType != 'multimodal' || has(self.llm)",
            message="spec.llm is required when spec.modelType is multimodal",
            check=lambda s: s.model_type is not ModelType.MULTIMODAL or s.llm is not None,
            field_path=".llm",
            reason="FieldValueRequired",
        ),
        Cel(
            rule="self.modelType != 'vision' || has(self.vision)",
            message="spec.vision is required when spec.modelType is vision",
            check=lambda s: s.model_type is not ModelType.VISION or s.vision is not None,
            field_path=".vision",
            reason="FieldValueRequired",
        ),
        Cel(
            rule="self.modelType != 'custom' || "
            "(has(self.image) && has(self.command) && size(self.command) > 0)",
            message="spec.image and spec.command are required when spec.modelType is custom",
            check=lambda s: s.model_type is not ModelType.CUSTOM or bool(s.image and s.command),
            reason="FieldValueRequired",
        ),
        Cel(
            rule="!has(self.llm) || self.modelType in ['llm', 'multimodal', 'custom']",
            message="spec.llm is only allowed when spec.modelType is llm, multimodal or custom",
            check=lambda s: _section_allowed(
                s, (ModelType.LLM, ModelType.MULTIMODAL, ModelType.CUSTOM), s.llm
            ),
            field_path=".llm",
            reason="FieldValueForbidden",
        ),
        Cel(
            rule="!has(self.vision) || self.modelType in ['vision', 'custom']",
            message="spec.vision is only allowed when spec.modelType is vision or custom",
            check=lambda s: _section_allowed(s, (ModelType.VISION, ModelType.CUSTOM), s.vision),
            field_path=".vision",
            reason="FieldValueForbidden",
        ),
    )

    model_type: Annotated[
        ModelType,
        immutable("spec.modelType", "create a new TrainingJob to train another kind of model"),
    ] = Field(
        description=(
            "Kind of model: llm (fine-tune a language model, needs spec.llm), vision (needs "
            "spec.vision), multimodal (a vision-language model, needs spec.llm) or custom "
            "(your own image and command). Immutable."
        )
    )
    description: str | None = Field(
        default=None, max_length=1024, description="Free-text description of the job."
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list,
        max_length=32,
        description="Free-form tags for organising jobs (unique; use labels for selection).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    dataset: Annotated[
        DatasetSource,
        immutable("spec.dataset", "checkpoints only continue the run on the data they saw"),
    ] = Field(description="Where the training data is. Immutable.")
    llm: LLMConfig | None = Field(
        default=None,
        description="Language-model settings; required for llm and multimodal.",
    )
    vision: VisionConfig | None = Field(
        default=None, description="Vision-model settings; required for vision."
    )
    training: TrainingParams = Field(
        default_factory=TrainingParams,
        description="Epochs, batch size, learning rate and the rest of the optimisation loop.",
        json_schema_extra={"default": {}},
    )
    optimization: OptimizationConfig = Field(
        default_factory=OptimizationConfig,
        description="Mixed precision, gradient checkpointing and gradient clipping.",
        json_schema_extra={"default": {}},
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig,
        description="GPU type, GPUs per worker, number of workers, CPU and memory.",
        json_schema_extra={"default": {}},
    )
    priority: Priority = Field(
        default=Priority.NORMAL,
        description="high, normal or low; mapped to a PriorityClass (high may preempt low).",
    )
    suspend: bool = Field(
        default=False,
        description=(
            "true stops the job: its Pods write a checkpoint and exit, the checkpoint volume "
            "is kept and the phase becomes Stopped. false resumes it from resumeFrom or the "
            "latest checkpoint."
        ),
    )
    resume_from: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "Id of the checkpoint (status.checkpoints[].id) to resume from. Unset: the latest."
        ),
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig,
        description="The checkpoint volume and how often checkpoints are written and kept.",
        json_schema_extra={"default": {}},
    )
    output: OutputConfig | None = Field(
        default=None,
        description="Publish the trained model to object storage on completion.",
    )
    cache: Annotated[
        CacheConfig | None,
        immutable("spec.cache", "the fetched sources' paths are on that claim"),
    ] = Field(
        default=None,
        description=(
            "A shared cache claim for fetched datasets and models. Unset: the operator's "
            "default cache claim where it exists in the namespace, else the job's "
            "checkpoint volume. Immutable."
        ),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "Container image of the workers. Required for custom; otherwise overrides the "
            "operator's trainer image for the model type."
        ),
    )
    command: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Entrypoint of the workers. Required for custom; otherwise overrides the trainer's."
        ),
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=256,
        description="Arguments to the entrypoint.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables for every worker (e.g. HF_TOKEN from a Secret).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy,
        description="Retry limit, deadline, cost ceiling and clean-up after the job finishes.",
        json_schema_extra={"default": {}},
    )

    def effective_learning_rate(self) -> float | None:
        """The learning rate the trainer uses: the spec's, else the model type's default."""
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        pipeline = self.vision.pipeline if self.vision is not None else None
        if pipeline is not None and PIPELINES[pipeline].learning_rate is not None:
            return PIPELINES[pipeline].learning_rate
        return DEFAULT_LEARNING_RATE.get(self.model_type)

    def uses_gpus(self) -> bool:
        """Whether workers request GPUs (False for gpuType cpu)."""
        return self.resources.gpu_type != GPU_TYPE_CPU
