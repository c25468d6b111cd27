"""Building torchvision models for a plan, and loading pretrained weights from a file.

Nothing is ever downloaded: every builder is called with ``weights=None`` and
``weights_backbone=None``; weights come only from a file on a volume. Detectors get
``min_size``/``max_size`` equal to the input size (so they never resize again), and R-CNN
proposal budgets shrink with the input area below the architecture's default size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.vision import libraries
from kubetrain.trainer.vision.catalog import Architecture, Family
from kubetrain.trainer.vision.tv import detection, get_model, ops_misc, segmentation

log = logging.getLogger(__name__)

PREFIX_MAPS = (
    ("", ""),
    ("", "backbone.body."),
    ("features.", "backbone.body."),
    ("", "backbone."),
    ("features.", "backbone."),
    ("", "model.encoder."),
    ("", "model."),
    ("", "detr."),
    ("", "backbone.body.model."),
)
"""(file prefix, model prefix) pairs tried when loading a weights file: the full model, or
a classifier's weights into a detector's or segmenter's backbone (an smp model's encoder),
or a library's own checkpoint into the wrapper around its model."""
MIN_LOADED = 0.5


def build(arch: Architecture, num_classes: int, size: tuple[int, int]) -> nn.Module:
    """A freshly initialised model for ``num_classes`` classes (detectors add background)."""
    if arch.family in (Family.SMP, Family.RFDETR, Family.TIMM_FCOS):
        return libraries.build(arch, num_classes, size)
    if arch.family is Family.CLASSIFIER:
        return _module(get_model(arch.name, weights=None, num_classes=num_classes))
    if arch.family is Family.SEGMENTER:
        kwargs: dict[str, Any] = {} if arch.name.startswith("lraspp") else {"aux_loss": False}
        builder = getattr(segmentation, arch.name)
        return _module(
            builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        )
    kwargs = detector_kwargs(arch, size)
    if arch.backbone:
        return _assembled_rcnn(arch, num_classes + 1, kwargs)
    builder = getattr(detection, arch.name)
    return _module(
        builder(weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs)
    )


def detector_kwargs(arch: Architecture, size: tuple[int, int]) -> dict[str, Any]:
    """Input size and proposal budgets for a detector trained at ``size``."""
    if arch.family is Family.SSD:
        return {}
    w, h = size
    kwargs: dict[str, Any] = {"min_size": min(w, h), "max_size": max(w, h)}
    if arch.family is Family.RCNN:
        share = min(1.0, (w * h) / float(arch.default_size**2))
        if share < 1.0:
            kwargs |= {
                "rpn_pre_nms_top_n_train": max(200, round(2000 * share)),
                "rpn_post_nms_top_n_train": max(100, round(2000 * share)),
                "rpn_pre_nms_top_n_test": max(100, round(1000 * share)),
                "rpn_post_nms_top_n_test": max(100, round(1000 * share)),
                "rpn_batch_size_per_image": max(64, round(256 * share)),
                "box_batch_size_per_image": max(64, round(512 * share)),
            }
    return kwargs


def _assembled_rcnn(arch: Architecture, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """Faster / Mask R-CNN on a backbone torchvision has no builder for, assembled the way
    torchvision assembles its own (trainable BatchNorm: they start from scratch)."""
    head = detection.MaskRCNN if arch.name.startswith("maskrcnn") else detection.FasterRCNN
    if arch.backbone.startswith("mobilenet"):
        backbone = detection.backbone_utils.mobilenet_backbone(
            backbone_name=arch.backbone, weights=None, fpn=True, norm_layer=nn.BatchNorm2d,
            trainable_layers=6,
        )  # fmt: skip
        anchors = ((32, 64, 128, 256, 512),) * 3
        generator = detection.anchor_utils.AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * 3)
        kwargs = {"rpn_anchor_generator": generator, "rpn_score_thresh": 0.05} | kwargs
    else:
        backbone = detection.backbone_utils.resnet_fpn_backbone(
            backbone_name=arch.backbone, weights=None, norm_layer=nn.BatchNorm2d,
            trainable_layers=5,
        )  # fmt: skip
    return _module(head(backbone, num_classes=num_classes, **kwargs))


def _module(value: Any) -> nn.Module:
    assert isinstance(value, nn.Module)
    return value


# -- weights ----------------------------------------------------------------------------------


def load_weights(model: nn.Module, path: Path) -> tuple[int, int]:
    """Copy every tensor of the file at ``path`` that fits ``model`` (by name and shape, under
    the best of ``PREFIX_MAPS``); returns (loaded, in the file). Heads whose class count
    differs keep their fresh initialisation."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"cannot read the weights file {path}: {err}") from None
    state = _state_dict(raw)
    if not state:
        raise ConfigError(f"weights file {path} holds no tensors (a state dict is expected)")
    target = model.state_dict()
    best: dict[str, torch.Tensor] = {}
    for source, dest in PREFIX_MAPS:
        matched = {
            dest + key[len(source) :]: value
            for key, value in state.items()
            if key.startswith(source)
            and (dest + key[len(source) :]) in target
            and target[dest + key[len(source) :]].shape == value.shape
        }
        if len(matched) > len(best):
            best = matched
    if len(best) < MIN_LOADED * len(state):
        raise ConfigError(
            f"weights file {path} does not fit this architecture: {len(best)} of its "
            f"{len(state)} tensors match the model's names and shapes"
        )
    model.load_state_dict(best, strict=False)
    log.info("loaded %d of %d tensors from %s; the model has %d", len(best), len(state), path,
             len(target))  # fmt: skip
    return len(best), len(state)


def _state_dict(raw: Any) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
        return {
            str(k).removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)
        }
    return {}


def freeze_batchnorm(module: nn.Module) -> int:
    """Turn the BatchNorm layers of ``module`` into frozen ones (pretrained detector backbones:
    their statistics would drift on a detector's small batches); returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = ops_misc.FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            assert child.running_mean is not None and child.running_var is not None
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count
