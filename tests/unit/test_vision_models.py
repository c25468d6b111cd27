"""Models built offline, pretrained weights from a file (also into a detector's backbone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kubetrain.api import VisionTask
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.vision import catalog, models
from kubetrain.trainer.vision.tv import ops_misc


def test_detectors_keep_the_input_size_and_shrink_budgets_for_small_inputs() -> None:
    rcnn = catalog.resolve(VisionTask.DETECTION, "fasterrcnn_resnet50_fpn")
    small = models.detector_kwargs(rcnn, (128, 96))
    assert (small["min_size"], small["max_size"]) == (96, 128)
    assert small["box_batch_size_per_image"] == 64 and small["rpn_pre_nms_top_n_train"] == 200
    assert set(models.detector_kwargs(rcnn, (640, 640))) == {"min_size", "max_size"}
    ssd = catalog.resolve(VisionTask.DETECTION, "ssdlite")
    assert models.detector_kwargs(ssd, (128, 128)) == {}


def test_classifier_weights_load_into_a_detector_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = models.build(catalog.resolve(VisionTask.CLASSIFICATION, "resnet18"), 10, (32, 32))
    path = tmp_path / "resnet18.pth"
    torch.save({"model": classifier.state_dict()}, path)
    arch = catalog.resolve(VisionTask.DETECTION, "fasterrcnn_resnet18_fpn")
    detector = models.build(arch, 2, (64, 64))
    loaded, total = models.load_weights(detector, path)
    assert total == len(classifier.state_dict()) and loaded == total - 2  # all but fc
    body = detector.backbone.body
    assert torch.equal(body.conv1.weight, classifier.conv1.weight)
    frozen = models.freeze_batchnorm(detector.backbone)
    assert frozen > 0 and isinstance(body.bn1, ops_misc.FrozenBatchNorm2d)
    assert torch.equal(body.bn1.running_mean, classifier.bn1.running_mean)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    other = models.build(
        catalog.resolve(VisionTask.CLASSIFICATION, "mobilenet_v3_small"), 3, (32, 32)
    )
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    model = models.build(catalog.resolve(VisionTask.CLASSIFICATION, "resnet18"), 3, (32, 32))
    with pytest.raises(ConfigError, match="does not fit this architecture"):
        models.load_weights(model, path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read the weights file"):
        models.load_weights(model, tmp_path / "junk.pth")


def test_a_head_for_other_classes_starts_fresh(tmp_path: Path) -> None:
    arch = catalog.resolve(VisionTask.SEMANTIC_SEGMENTATION, "lraspp")
    source = models.build(arch, 21, (64, 64))
    torch.save(source.state_dict(), tmp_path / "lraspp.pth")
    target = models.build(arch, 3, (64, 64))
    loaded, total = models.load_weights(target, tmp_path / "lraspp.pth")
    assert 0 < total - loaded <= 4  # the two 21-class output layers (weights and biases)
    assert isinstance(target, nn.Module)
