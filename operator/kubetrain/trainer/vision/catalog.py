"""The architectures the vision trainer builds, by task; torch-free so preflight can check names.

torchvision's own builders keep their names (their published weight files then load as they
are); a few R-CNNs on smaller backbones are assembled from torchvision parts the same way
torchvision assembles its own. Short aliases name the usual variant.

The managed-training pipelines (``spec.vision.pipeline``) each own a set of them:
segmentation-models-pytorch's decoders on its encoders (``smp_<decoder>_<encoder>``),
RF-DETR's sizes (``rfdetr_<size>``, ``rfdetr_seg_<size>``), torchvision's Mask R-CNNs for
detectron2, and for yolox an anchor-free FCOS head on timm's CSP-Darknet with YOLOX's Focus
stem (``fcos_cspdarknet_<s|m|l|x>``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from kubetrain.api import VisionPipeline, VisionTask
from kubetrain.trainer.config import ConfigError


class Family(StrEnum):
    """How a model is built, trained and exported."""

    CLASSIFIER = "classifier"
    RCNN = "rcnn"
    RETINANET = "retinanet"
    FCOS = "fcos"
    SSD = "ssd"
    SEGMENTER = "segmenter"
    SMP = "smp"
    """segmentation-models-pytorch: ``library`` is the decoder class, ``backbone`` the encoder."""
    RFDETR = "rfdetr"
    """RF-DETR: ``library`` is the rfdetr model config class."""
    TIMM_FCOS = "timm_fcos"
    """torchvision's FCOS head and FPN on a timm backbone (``backbone``)."""


@dataclass(frozen=True)
class Architecture:
    """One buildable model: its task, family and the input size it uses when none is set."""

    name: str
    task: VisionTask
    family: Family
    default_size: int
    backbone: str = ""
    """For R-CNNs assembled here (not torchvision builders): the backbone's name."""
    fixed_size: int = 0
    """SSDs resize every image to this square internally, whatever the input size."""
    library: str = ""
    """The library's own name for the model (see ``Family``)."""
    multiple: int = 1
    """Input width and height must be multiples of this (encoder strides, ViT patches)."""
    min_side: int = 0
    """The smallest width or height it can take (its pooling pyramid needs the room)."""
    pipeline: VisionPipeline | None = None
    """The managed-training pipeline this architecture belongs to, if any."""

    @property
    def optimizer(self) -> str:
        """The optimiser it trains with unless KUBETRAIN_OPTIMIZER says otherwise."""
        return "adamw" if self.family is Family.RFDETR else "sgd"

    @property
    def detector(self) -> bool:
        return self.task in (VisionTask.DETECTION, VisionTask.INSTANCE_SEGMENTATION)


_C, _D = VisionTask.CLASSIFICATION, VisionTask.DETECTION
_I, _S = VisionTask.INSTANCE_SEGMENTATION, VisionTask.SEMANTIC_SEGMENTATION

_LIST = [
    *(
        Architecture(name, _C, Family.CLASSIFIER, 224)
        for name in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
            "efficientnet_v2_s",
            "convnext_tiny",
            "regnet_y_400mf",
            "shufflenet_v2_x1_0",
        )
    ),
    Architecture("fasterrcnn_resnet50_fpn", _D, Family.RCNN, 640),
    Architecture("fasterrcnn_resnet50_fpn_v2", _D, Family.RCNN, 640),
    Architecture("fasterrcnn_mobilenet_v3_large_fpn", _D, Family.RCNN, 640),
    Architecture("fasterrcnn_mobilenet_v3_large_320_fpn", _D, Family.RCNN, 320),
    Architecture("fasterrcnn_resnet18_fpn", _D, Family.RCNN, 640, backbone="resnet18"),
    Architecture("fasterrcnn_resnet34_fpn", _D, Family.RCNN, 640, backbone="resnet34"),
    Architecture("fasterrcnn_resnet101_fpn", _D, Family.RCNN, 640, backbone="resnet101"),
    Architecture("retinanet_resnet50_fpn", _D, Family.RETINANET, 640),
    Architecture("retinanet_resnet50_fpn_v2", _D, Family.RETINANET, 640),
    Architecture("fcos_resnet50_fpn", _D, Family.FCOS, 640),
    Architecture("ssdlite320_mobilenet_v3_large", _D, Family.SSD, 320, fixed_size=320),
    Architecture("ssd300_vgg16", _D, Family.SSD, 300, fixed_size=300),
    Architecture("maskrcnn_resnet50_fpn", _I, Family.RCNN, 640),
    Architecture("maskrcnn_resnet50_fpn_v2", _I, Family.RCNN, 640),
    Architecture("maskrcnn_resnet18_fpn", _I, Family.RCNN, 640, backbone="resnet18"),
    Architecture("maskrcnn_resnet34_fpn", _I, Family.RCNN, 640, backbone="resnet34"),
    Architecture("maskrcnn_resnet101_fpn", _I, Family.RCNN, 640, backbone="resnet101"),
    Architecture(
        "maskrcnn_mobilenet_v3_large_fpn", _I, Family.RCNN, 640, backbone="mobilenet_v3_large"
    ),
    Architecture("fcn_resnet50", _S, Family.SEGMENTER, 512),
    Architecture("fcn_resnet101", _S, Family.SEGMENTER, 512),
    Architecture("deeplabv3_resnet50", _S, Family.SEGMENTER, 512),
    Architecture("deeplabv3_resnet101", _S, Family.SEGMENTER, 512),
    Architecture("deeplabv3_mobilenet_v3_large", _S, Family.SEGMENTER, 512),
    Architecture("lraspp_mobilenet_v3_large", _S, Family.SEGMENTER, 512),
]

# torchvision's classifiers are the classification pipeline's, its Mask R-CNNs detectron2's.
_LIST = [
    replace(a, pipeline=VisionPipeline.CLASSIFICATION) if a.family is Family.CLASSIFIER
    else replace(a, pipeline=VisionPipeline.DETECTRON2) if a.family is Family.RCNN and a.task is _I
    else a
    for a in _LIST
]  # fmt: skip

SMP_DECODERS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
SMP_ENCODERS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "efficientnet-b0",
    "efficientnet-b3",
)
_SEG = VisionPipeline.SM_PYTORCH
_LIST += [
    Architecture(
        f"smp_{decoder}_{encoder}",
        _S,
        Family.SMP,
        512,
        backbone=encoder,
        library=cls,
        multiple=32,
        min_side=128 if decoder == "pan" else 0,
        pipeline=_SEG,
    )
    for decoder, cls in SMP_DECODERS.items()
    for encoder in SMP_ENCODERS
]
_DET, _ISEG = VisionPipeline.RFDETR_DETECTION, VisionPipeline.RFDETR_SEGMENTATION
_LIST += [
    Architecture(f"rfdetr_{size}", _D, Family.RFDETR, res, library=cls, multiple=32, pipeline=_DET)
    for size, cls, res in (
        ("nano", "RFDETRNanoConfig", 384),
        ("small", "RFDETRSmallConfig", 512),
        ("medium", "RFDETRMediumConfig", 576),
        ("large", "RFDETRLargeConfig", 704),
    )
] + [
    Architecture(
        f"rfdetr_seg_{size}", _I, Family.RFDETR, res, library=cls, multiple=m, pipeline=_ISEG
    )
    for size, cls, res, m in (
        ("nano", "RFDETRSegNanoConfig", 312, 12),
        ("small", "RFDETRSegSmallConfig", 384, 24),
        ("medium", "RFDETRSegMediumConfig", 432, 24),
        ("large", "RFDETRSegLargeConfig", 504, 24),
        ("xlarge", "RFDETRSegXLargeConfig", 624, 24),
        ("2xlarge", "RFDETRSeg2XLargeConfig", 768, 24),
    )
]
_LIST += [
    Architecture(
        f"fcos_cspdarknet_{size}",
        _D,
        Family.TIMM_FCOS,
        640,
        backbone=f"cs3darknet_focus_{size}",
        multiple=32,
        pipeline=VisionPipeline.YOLOX,
    )
    for size in ("s", "m", "l", "x")
]

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _LIST}

ALIASES = {
    "mobilenet_v3": "mobilenet_v3_large",
    "efficientnet": "efficientnet_b0",
    "fasterrcnn": "fasterrcnn_resnet50_fpn",
    "retinanet": "retinanet_resnet50_fpn",
    "fcos": "fcos_resnet50_fpn",
    "ssdlite": "ssdlite320_mobilenet_v3_large",
    "ssd": "ssd300_vgg16",
    "maskrcnn": "maskrcnn_resnet50_fpn",
    "fcn": "fcn_resnet50",
    "deeplabv3": "deeplabv3_resnet50",
    "lraspp": "lraspp_mobilenet_v3_large",
    "unet": "smp_unet_resnet34",
    "fpn": "smp_fpn_resnet34",
    "deeplabv3plus": "smp_deeplabv3plus_resnet34",
    "segformer": "smp_segformer_resnet34",
    "rfdetr": "rfdetr_small",
    "rfdetr_seg": "rfdetr_seg_small",
    "yolox": "fcos_cspdarknet_s",
}


def names(task: VisionTask, pipeline: VisionPipeline | None = None) -> list[str]:
    """The architecture names (aliases excluded) that train ``task`` (in ``pipeline``)."""
    return [
        a.name for a in _LIST if a.task is task and (pipeline is None or in_pipeline(a, pipeline))
    ]


def in_pipeline(arch: Architecture, pipeline: VisionPipeline) -> bool:
    """Whether ``pipeline`` trains ``arch``."""
    return arch.pipeline is pipeline


def resolve(task: VisionTask, name: str, pipeline: VisionPipeline | None = None) -> Architecture:
    """The architecture ``name`` (or its alias) for ``task`` (and ``pipeline``); unknown or
    mismatched names fail with the list of the ones that would work."""
    key = ALIASES.get(name.lower(), name.lower())
    arch = ARCHITECTURES.get(key)
    supported = ", ".join(names(task, pipeline))
    if arch is None:
        raise ConfigError(
            f"spec.vision.architecture {name!r} is not supported; for task {task.value} "
            f"use one of: {supported}"
        )
    if arch.task is not task:
        raise ConfigError(
            f"spec.vision.architecture {name!r} is a {arch.task.value} model but "
            f"spec.vision.task is {task.value}; use one of: {supported}"
        )
    if pipeline is not None and not in_pipeline(arch, pipeline):
        raise ConfigError(
            f"spec.vision.architecture {name!r} is not a model of spec.vision.pipeline "
            f"{pipeline.value}; use one of: {supported}"
        )
    return arch
