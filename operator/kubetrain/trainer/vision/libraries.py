"""The pipelines' models from their own libraries, shaped like torchvision's so one loop trains all.

- segmentation-models-pytorch: ``smp.create_model(decoder, encoder)``; its logits come back
  as ``{"out": logits}``, as torchvision's segmenters return them.
- RF-DETR: the rfdetr package's LW-DETR with its own Hungarian-matched set criterion and
  post-processing, wrapped as a torchvision detector: a list of [0, 1] images (and targets
  with pixel ``xyxy`` boxes and 1-based labels) in; weighted losses in training mode, per-image
  ``boxes``/``labels``/``scores`` (and ``masks``) in eval mode.
- timm backbones under torchvision's FCOS head and FPN (the yolox pipeline's stand-in).

Nothing is downloaded: every library is asked for random initialisation; pretrained weights
come from a file (``models.load_weights``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kubetrain.trainer.vision.catalog import Architecture, Family
from kubetrain.trainer.vision.tasks import MEAN, STD
from kubetrain.trainer.vision.tv import detection, feature_pyramid_network

log = logging.getLogger(__name__)

FPN_CHANNELS = 256


def build(arch: Architecture, num_classes: int, size: tuple[int, int]) -> nn.Module:
    """A freshly initialised model of a library family (``num_classes`` without background)."""
    if arch.family is Family.SMP:
        return SmpSegmenter(arch, num_classes)
    if arch.family is Family.RFDETR:
        return RFDETR(arch, num_classes, size)
    if arch.family is Family.TIMM_FCOS:
        return _timm_fcos(arch, num_classes + 1, size)
    raise ValueError(f"{arch.name} is not built from a library ({arch.family.value})")


# -- segmentation-models-pytorch ----------------------------------------------------------------


class SmpSegmenter(nn.Module):
    """An smp model returning ``{"out": logits}`` like torchvision's segmenters."""

    def __init__(self, arch: Architecture, num_classes: int) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp  # type: ignore[import-untyped]  # noqa: PLC0415

        self.model = smp.create_model(
            arch.library, encoder_name=arch.backbone, encoder_weights=None, classes=num_classes
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.model(images)}


# -- RF-DETR --------------------------------------------------------------------------------------


class RFDETR(nn.Module):
    """RF-DETR (LW-DETR on a windowed DINOv2 backbone) as a torchvision-style detector."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, arch: Architecture, num_classes: int, size: tuple[int, int]) -> None:
        super().__init__()
        from rfdetr import config  # noqa: PLC0415
        from rfdetr.models.lwdetr import (  # noqa: PLC0415
            build_criterion_from_config,
            build_model_from_config,
        )

        model_config_class = getattr(config, arch.library)
        patch = model_config_class.model_fields["patch_size"].default
        side = max(size)
        with _quiet_rfdetr():
            model_config = model_config_class(
                num_classes=num_classes,
                pretrain_weights=None,
                resolution=side,
                positional_encoding_size=side // patch,
                device="cpu",
            )
            train_config = config.TrainConfig(dataset_dir=".", output_dir=".")
            self.detr = build_model_from_config(model_config, train_config)
            self.criterion, self.postprocess = build_criterion_from_config(
                model_config, train_config
            )
        self.masks = bool(getattr(model_config, "segmentation_head", False))
        self.weights = dict(self.criterion.weight_dict)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> Any:
        batch = (torch.stack(images) - self.mean) / self.std
        height, width = batch.shape[-2:]
        if self.training:
            assert targets is not None, "RF-DETR trains on targets"
            converted = [self._target(t, width, height) for t in targets]
            outputs = self.detr(batch, converted)
            losses = self.criterion(outputs, converted)
            return {k: v * self.weights[k] for k, v in losses.items() if k in self.weights}
        outputs = self.detr(batch)
        sizes = torch.tensor([[height, width]] * len(images), device=batch.device)
        found = self.postprocess(outputs, sizes)
        return [self._detections(f) for f in found]

    def _target(
        self, target: dict[str, torch.Tensor], width: int, height: int
    ) -> dict[str, torch.Tensor]:
        boxes = target["boxes"].float()
        scale = boxes.new_tensor([width, height, width, height])
        x0, y0, x1, y1 = (boxes / scale).unbind(-1)
        converted = {
            "labels": target["labels"] - 1,  # torchvision's background slot is not DETR's
            "boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1),
        }
        if self.masks:
            converted["masks"] = target["masks"].bool()
        return converted

    def _detections(self, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = {"boxes": found["boxes"], "labels": found["labels"] + 1, "scores": found["scores"]}
        if self.masks:
            masks = found["masks"]
            result["masks"] = masks[:, 0] if masks.dim() == 4 else masks
        return result


class RFDETRExport(nn.Module):
    """The export graph: [0, 1] images in; normalised ``cxcywh`` boxes, class logits (and mask
    logits) per query out, as the rfdetr package's own ONNX export writes them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: RFDETR) -> None:
        super().__init__()
        self.detr = model.detr
        self.detr.export()
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        self.register_buffer("std", model.std.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: tuple[torch.Tensor, ...] = self.detr((images - self.mean) / self.std)
        return outputs


@contextlib.contextmanager
def _quiet_rfdetr() -> Iterator[None]:
    """rfdetr warns at every build that no published weights are loaded: by design here (a
    weights file, when the spec names one, is loaded afterwards)."""
    logger = logging.getLogger("rf-detr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pretrain_weights=None")
            yield
    finally:
        logger.setLevel(level)


# -- timm backbones under FCOS ---------------------------------------------------------------------


class TimmFPN(nn.Module):
    """A timm feature extractor's last three stages through a feature pyramid (P3-P7)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm  # noqa: PLC0415

        fpn = feature_pyramid_network
        body: Any = timm.create_model(  # "getter": the model's own names, so timm files load
            name, pretrained=False, features_only=True, out_indices=(-3, -2, -1),
            feature_cls="getter",
        )  # fmt: skip
        channels = list(body.feature_info.channels())
        self.body = body
        self.fpn = fpn.FeaturePyramidNetwork(
            channels, FPN_CHANNELS, extra_blocks=fpn.LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)
        )
        self.out_channels = FPN_CHANNELS

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        result: OrderedDict[str, torch.Tensor] = self.fpn(
            OrderedDict((str(i), f) for i, f in enumerate(features))
        )
        return result


def _timm_fcos(arch: Architecture, num_classes: int, size: tuple[int, int]) -> nn.Module:
    w, h = size
    model = detection.FCOS(
        TimmFPN(arch.backbone), num_classes=num_classes, min_size=min(w, h), max_size=max(w, h)
    )
    assert isinstance(model, nn.Module)
    return model
