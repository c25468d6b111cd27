"""The architectures the vision trainer builds, by task; torch-free so preflight can check names.

torchvision's own builders keep their names (their published weight files then load as they
are); a few R-CNNs on smaller backbones are assembled from torchvision parts the same way
torchvision assembles its own. Short aliases name the usual variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubetrain.api import VisionTask
from kubetrain.trainer.config import ConfigError


class Family(StrEnum):
    """How a model is built, trained and exported."""

    CLASSIFIER = "classifier"
    RCNN = "rcnn"
    RETINANET = "retinanet"
    FCOS = "fcos"
    SSD = "ssd"
    SEGMENTER = "segmenter"


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
}


def names(task: VisionTask) -> list[str]:
    """The architecture names (aliases excluded) that train ``task``."""
    return [a.name for a in _LIST if a.task is task]


def resolve(task: VisionTask, name: str) -> Architecture:
    """The architecture ``name`` (or its alias) for ``task``; unknown or mismatched names fail
    with the list of the ones that would work."""
    key = ALIASES.get(name.lower(), name.lower())
    arch = ARCHITECTURES.get(key)
    supported = ", ".join(names(task))
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
    return arch
