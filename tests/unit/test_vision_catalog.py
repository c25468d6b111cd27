"""Architecture names: resolved per task, aliases, and errors that list what would work."""

from __future__ import annotations

import pytest

from kubetrain.api import VisionTask
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.vision import catalog
from kubetrain.trainer.vision.catalog import Family


@pytest.mark.parametrize(
    ("task", "name", "resolved", "family"),
    [
        (VisionTask.CLASSIFICATION, "resnet50", "resnet50", Family.CLASSIFIER),
        (VisionTask.CLASSIFICATION, "MobileNet_V3", "mobilenet_v3_large", Family.CLASSIFIER),
        (VisionTask.DETECTION, "fcos", "fcos_resnet50_fpn", Family.FCOS),
        (VisionTask.DETECTION, "ssdlite", "ssdlite320_mobilenet_v3_large", Family.SSD),
        (VisionTask.INSTANCE_SEGMENTATION, "maskrcnn", "maskrcnn_resnet50_fpn", Family.RCNN),
        (VisionTask.SEMANTIC_SEGMENTATION, "deeplabv3", "deeplabv3_resnet50", Family.SEGMENTER),
    ],
)
def test_names_and_aliases_resolve(
    task: VisionTask, name: str, resolved: str, family: Family
) -> None:
    arch = catalog.resolve(task, name)
    assert (arch.name, arch.task, arch.family) == (resolved, task, family)


def test_an_unknown_name_lists_the_task_s_architectures() -> None:
    with pytest.raises(ConfigError) as err:
        catalog.resolve(VisionTask.SEMANTIC_SEGMENTATION, "unet3d")
    message = str(err.value)
    assert message.startswith("spec.vision.architecture 'unet3d' is not supported")
    assert ", ".join(catalog.names(VisionTask.SEMANTIC_SEGMENTATION)) in message


def test_a_model_of_another_task_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"is a classification model but spec\.vision\.task is"):
        catalog.resolve(VisionTask.DETECTION, "resnet18")


def test_every_task_has_architectures_and_detectors_know_it() -> None:
    for task in VisionTask:
        assert catalog.names(task)
    assert catalog.resolve(VisionTask.DETECTION, "fasterrcnn_resnet18_fpn").detector
    assert not catalog.resolve(VisionTask.SEMANTIC_SEGMENTATION, "lraspp").detector
