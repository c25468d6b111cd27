"""The managed-training pipelines: what each fills in, which models it owns, how they build,
what GPU they default to, and how pretrained weights reach the libraries' models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from pydantic import ValidationError

from kubetrain.api import PIPELINES, TrainingJobSpec, VisionPipeline, VisionTask
from kubetrain.api.catalogue import Catalogue
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.vision import catalog, models
from kubetrain.trainer.vision.catalog import Family
from kubetrain.trainer.vision.libraries import RFDETR

ROOT = Path(__file__).resolve().parents[2]


def vision_spec(**vision: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {"modelType": "vision", "dataset": {"synthetic": {"samples": 8}}, "vision": vision}
    )


@pytest.mark.parametrize(
    ("pipeline", "task", "architecture", "gpu"),
    [
        ("classification", VisionTask.CLASSIFICATION, "resnet50", "a10g"),
        ("sm_pytorch", VisionTask.SEMANTIC_SEGMENTATION, "smp_unet_resnet34", "a10g"),
        ("detectron2", VisionTask.INSTANCE_SEGMENTATION, "maskrcnn_resnet50_fpn", "a100"),
        ("rfdetr_detection", VisionTask.DETECTION, "rfdetr_small", "a10g"),
        ("rfdetr_segmentation", VisionTask.INSTANCE_SEGMENTATION, "rfdetr_seg_small", "a10g"),
        ("yolox", VisionTask.DETECTION, "fcos_cspdarknet_s", "a10g"),
    ],
)
def test_a_pipeline_fills_the_task_model_and_gpu_tier(
    pipeline: str, task: VisionTask, architecture: str, gpu: str
) -> None:
    spec = vision_spec(pipeline=pipeline)
    assert spec.vision is not None
    assert (spec.vision.task, spec.vision.architecture) == (task, architecture)
    assert Catalogue().gpu_type_for(spec) == gpu
    arch = catalog.resolve(task, architecture, VisionPipeline(pipeline))
    assert catalog.in_pipeline(arch, VisionPipeline(pipeline))


def test_large_rfdetrs_default_to_an_a100_and_the_spec_or_catalogue_decide_otherwise() -> None:
    large = vision_spec(pipeline="rfdetr_segmentation", architecture="rfdetr_seg_2xlarge")
    assert Catalogue().gpu_type_for(large) == "a100"
    named = large.model_copy(update={"resources": large.resources.model_copy(
        update={"gpu_type": "h100"})})  # fmt: skip
    assert Catalogue().gpu_type_for(named) == "h100"
    own = Catalogue.model_validate(
        {"replaceDefaults": True, "defaultType": "t4",
         "gpuTypes": {"t4": {"description": "T4", "products": ["Tesla-T4"]}}}
    )  # fmt: skip
    assert own.gpu_type_for(large) == "t4"  # a catalogue without a100 keeps its default
    assert Catalogue().gpu_type_for(vision_spec(task="detection", architecture="ssd")) == "a100"


def test_rfdetr_pipelines_default_to_their_learning_rate() -> None:
    assert vision_spec(pipeline="rfdetr_detection").effective_learning_rate() == 1e-4
    assert vision_spec(pipeline="yolox").effective_learning_rate() == 1e-2


def test_a_task_that_contradicts_the_pipeline_or_no_model_at_all_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"spec\.vision\.task does not match"):
        vision_spec(pipeline="sm_pytorch", task="detection")
    with pytest.raises(ValidationError, match=r"spec\.vision needs a pipeline, or a task and"):
        vision_spec(task="detection")
    with pytest.raises(ValidationError, match="pipeline"):
        vision_spec(pipeline="yolov8")


def test_a_pipeline_refuses_other_pipelines_models_and_lists_its_own() -> None:
    with pytest.raises(ConfigError) as err:
        catalog.resolve(VisionTask.DETECTION, "fcos_resnet50_fpn", VisionPipeline.YOLOX)
    assert str(err.value) == (
        "spec.vision.architecture 'fcos_resnet50_fpn' is not a model of spec.vision.pipeline "
        "yolox; use one of: fcos_cspdarknet_s, fcos_cspdarknet_m, fcos_cspdarknet_l, "
        "fcos_cspdarknet_x"
    )
    assert catalog.names(VisionTask.INSTANCE_SEGMENTATION, VisionPipeline.DETECTRON2) == [
        a.name for a in catalog.ARCHITECTURES.values()
        if a.family is Family.RCNN and a.task is VisionTask.INSTANCE_SEGMENTATION
    ]  # fmt: skip
    for pipeline, defaults in PIPELINES.items():
        assert catalog.names(defaults.task, pipeline), pipeline


@pytest.mark.parametrize(
    "name",
    [
        *(f"smp_{decoder}_resnet18" for decoder in catalog.SMP_DECODERS),
        *(f"smp_unet_{encoder}" for encoder in catalog.SMP_ENCODERS),
    ],
)
def test_every_smp_decoder_and_encoder_builds_and_segments(name: str) -> None:
    arch = catalog.ARCHITECTURES[name]
    side = max(128 if arch.min_side else 64, arch.min_side)
    model = models.build(arch, 3, (side, side)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, side, side))["out"]
    assert out.shape == (1, 3, side, side)


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [("rfdetr_nano", 96, 64), ("rfdetr_seg_nano", 96, 48), ("fcos_cspdarknet_s", 96, 64)],
)
def test_library_detectors_train_and_detect_like_torchvision_s(
    name: str, width: int, height: int
) -> None:
    arch = catalog.ARCHITECTURES[name]  # inputs not square
    model = models.build(arch, 2, (width, height))
    images = [torch.rand(3, height, width) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([2])}
               for _ in images]  # fmt: skip
    if arch.task is VisionTask.INSTANCE_SEGMENTATION:
        for target in targets:
            target["masks"] = torch.zeros(1, height, width, dtype=torch.uint8)
            target["masks"][0, 4:30, 4:40] = 1
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    model.eval()
    with torch.no_grad():
        found = model(images)[0]
    assert found["boxes"].shape[1] == 4
    assert bool((found["labels"] >= 1).all())  # 1-based, torchvision's convention
    if arch.task is VisionTask.INSTANCE_SEGMENTATION:
        assert found["masks"].shape[-2:] == (height, width)


def test_a_library_checkpoint_and_encoder_weights_load_into_the_pipelines_models(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    classifier = models.build(catalog.ARCHITECTURES["resnet18"], 10, (32, 32))
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    unet = models.build(catalog.ARCHITECTURES["smp_unet_resnet18"], 2, (64, 64))
    loaded, total = models.load_weights(unet, tmp_path / "resnet18.pth")
    assert loaded == total - 2  # all but the classifier's fc
    assert torch.equal(unet.model.encoder.conv1.weight, classifier.conv1.weight)

    darknet = timm.create_model("cs3darknet_focus_s", pretrained=False)
    torch.save(darknet.state_dict(), tmp_path / "cs3darknet_focus_s.pth")
    yolox = models.build(catalog.ARCHITECTURES["fcos_cspdarknet_s"], 2, (64, 64))
    loaded, total = models.load_weights(yolox, tmp_path / "cs3darknet_focus_s.pth")
    assert loaded == total - 2  # all but timm's classifier head
    stem = darknet.stem.conv1.conv.weight
    assert torch.equal(yolox.backbone.body.model.stem.conv1.conv.weight, stem)

    source = models.build(catalog.ARCHITECTURES["rfdetr_nano"], 5, (64, 64))
    assert isinstance(source, RFDETR)
    torch.save({"model": source.detr.state_dict(), "args": {}}, tmp_path / "rf-detr-nano.pth")
    target = models.build(catalog.ARCHITECTURES["rfdetr_nano"], 2, (64, 64))
    assert isinstance(target, RFDETR)
    loaded, total = models.load_weights(target, tmp_path / "rf-detr-nano.pth")
    fresh = {k for k, v in source.detr.state_dict().items()
             if v.shape != target.detr.state_dict()[k].shape}  # fmt: skip
    assert loaded == total - len(fresh)  # only the class heads sized for 5 classes start fresh
    assert fresh and all("class_embed" in k for k in fresh)
    weight = "backbone.0.encoder.encoder.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(target.detr.state_dict()[weight], source.detr.state_dict()[weight])


def test_the_operator_s_catalogue_can_move_a_pipeline_to_another_gpu_type() -> None:
    catalogue = Catalogue.model_validate({"pipelineGpuTypes": {"detectron2": "h100"}})
    assert catalogue.gpu_type_for(vision_spec(pipeline="detectron2")) == "h100"
    assert catalogue.gpu_type_for(vision_spec(pipeline="yolox")) == "a10g"
    with pytest.raises(ValidationError, match="pipelineGpuTypes: yolo is not a vision pipeline"):
        Catalogue.model_validate({"pipelineGpuTypes": {"yolo": "h100"}})
    schema = json.loads((ROOT / "charts" / "kubetrain" / "values.schema.json").read_text())
    chart = schema["properties"]["gpuCatalogue"]["properties"]["pipelineGpuTypes"]
    assert chart["propertyNames"]["enum"] == [p.value for p in VisionPipeline]
