"""ONNX export of the trained model, checked against PyTorch under ONNX Runtime.

Classifiers and segmenters are exported with their input normalisation built in: the
ONNX model takes float32 RGB images scaled to [0, 1], N x 3 x H x W (N fixed at 1 unless
spec.vision.export.dynamicBatch). Detectors are exported in eval mode the way torchvision
supports it: one image (3 x H x W, [0, 1]) in, ``boxes`` (x0 y0 x1 y1 pixels), ``labels``
(0-based class indices), ``scores`` and, for Mask R-CNN, ``masks`` (N x 1 x H x W
probabilities) out, with their post-processing (NMS, score threshold) in the graph.
RF-DETR is exported as its own package exports it: [0, 1] images (N x 3 x H x W) in, per
query ``boxes`` (normalised cx cy w h), class ``logits`` (sigmoid scores; index i is class
i) and, for segmentation, mask ``logits`` out; top-k selection is left to the caller.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from kubetrain.api import ExportConfig, VisionTask
from kubetrain.trainer.vision.catalog import Architecture
from kubetrain.trainer.vision.libraries import RFDETR, RFDETRExport
from kubetrain.trainer.vision.tasks import MEAN, STD

log = logging.getLogger(__name__)

MATCH_IOU = 0.99
MIN_MATCHED = 0.98
"""Share of PyTorch's confident detections ONNX Runtime must reproduce (NMS may break a
near-tie differently after float rounding)."""


class ExportError(Exception):
    """The model could not be exported, or the export does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class Exported:
    """What was written and how well it matches PyTorch."""

    inputs: dict[str, list[int | str]]
    outputs: list[str]
    opset: int
    max_difference: float
    checked: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For ``model.json`` (camelCase, like the rest of the job's files)."""
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "opset": self.opset,
            "maxDifference": self.max_difference,
            "checked": self.checked,
        }


class _Normalised(nn.Module):
    """A classifier or segmenter that takes [0, 1] images and returns plain logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, segmenter: bool) -> None:
        super().__init__()
        self.model = model
        self.segmenter = segmenter
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model((images - self.mean) / self.std)
        result: torch.Tensor = out["out"] if self.segmenter else out
        return result


class _Detector(nn.Module):
    """A torchvision detector on one image, with 0-based class indices."""

    def __init__(self, model: nn.Module, masks: bool) -> None:
        super().__init__()
        self.model = model
        self.masks = masks

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model([image])[0]
        outputs = (found["boxes"], found["labels"] - 1, found["scores"])
        return (*outputs, found["masks"]) if self.masks else outputs


def export(
    model: nn.Module,
    arch: Architecture,
    config: ExportConfig,
    path: Path,
    *,
    samples: torch.Tensor,
    tolerance: float,
) -> Exported:
    """Export ``model`` (eval mode, CPU) to ``path`` and check it on ``samples`` (N x 3 x H x W
    in [0, 1]) under ONNX Runtime; raises ``ExportError`` when either fails."""
    model = model.to("cpu").eval()
    detector = arch.detector and not isinstance(model, RFDETR)
    masks = arch.name.startswith("maskrcnn")
    wrapper: nn.Module
    if detector:
        wrapper = _Detector(model, masks)
        names = ["boxes", "labels", "scores", *(["masks"] if masks else [])]
        example: tuple[Any, ...] = (samples[0],)
        inputs: dict[str, list[int | str]] = {"image": list(samples.shape[1:])}
        dynamic = {name: {0: "detections"} for name in names}
        if config.dynamic_batch:
            log.warning("export.dynamicBatch: detectors are exported for one image at a time")
    else:
        if isinstance(model, RFDETR):
            wrapper = RFDETRExport(copy.deepcopy(model))  # export() rewires the copy only
            names = ["boxes", "logits", *(["masks"] if model.masks else [])]
        else:
            wrapper = _Normalised(model, segmenter=arch.task is VisionTask.SEMANTIC_SEGMENTATION)
            names = ["logits"]
        batch = samples[: 2 if config.dynamic_batch else 1]
        example = (batch,)
        shape: list[int | str] = list(batch.shape)
        dynamic = {}
        if config.dynamic_batch:
            shape[0] = "batch"
            dynamic = {name: {0: "batch"} for name in ["images", *names]}
        inputs = {"images": shape}
    wrapper.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter(
                "ignore"
            )  # tracer chatter about torchvision's Python control flow
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=False,
                opset_version=config.opset,
                input_names=list(inputs),
                output_names=names,
                dynamic_axes=dynamic or None,
                do_constant_folding=True,
            )
    except Exception as err:
        raise ExportError(
            f"ONNX export of {arch.name} failed: {type(err).__name__}: {err}"
        ) from err
    session = _session(path)
    with torch.no_grad():
        if detector:
            difference, checked = _check_detections(wrapper, session, samples, tolerance)
        else:
            difference, checked = _check_dense(wrapper, session, example[0], tolerance, names)
    log.info("ONNX model %s matches PyTorch (max difference %.3g)", path.name, difference)
    return Exported(inputs, names, config.opset, difference, checked)


def _session(path: Path) -> Any:
    import onnxruntime  # type: ignore[import-untyped]  # noqa: PLC0415

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"ONNX Runtime cannot load the exported model: {err}") from err


def _check_dense(
    wrapper: nn.Module, session: Any, batch: torch.Tensor, tolerance: float, names: list[str]
) -> tuple[float, dict[str, Any]]:
    """Every output of ONNX Runtime against PyTorch's, relative to the output's scale."""
    produced = wrapper(batch)
    expected = [t.numpy() for t in (produced if isinstance(produced, tuple) else (produced,))]
    got = session.run(None, {"images": batch.numpy()})
    worst = 0.0
    for name, ours, theirs in zip(names, expected, got, strict=True):
        difference = float(np.abs(theirs - ours).max())
        scale = max(1.0, float(np.abs(ours).max()))
        if not difference <= tolerance * scale:
            raise ExportError(
                f"ONNX Runtime's {name} differ from PyTorch's by {difference:.3g} "
                f"(allowed {tolerance * scale:.3g})"
            )
        worst = max(worst, difference)
    shapes = {name: list(out.shape) for name, out in zip(names, expected, strict=True)}
    checked: dict[str, Any] = {"images": int(batch.shape[0])}
    checked |= {"outputShape": shapes["logits"]} if len(names) == 1 else {"outputShapes": shapes}
    return worst, checked


def _check_detections(
    wrapper: nn.Module, session: Any, samples: torch.Tensor, tolerance: float
) -> tuple[float, dict[str, Any]]:
    """Both ways: PyTorch's detections found by ONNX Runtime, and ONNX Runtime's by PyTorch
    (so an export that detects what PyTorch does not fails too)."""
    worst, compared, matched = 0.0, 0, 0
    for image in samples:
        expected = [t.numpy() for t in wrapper(image)]
        got = session.run(None, {"image": image.numpy()})
        for ours, theirs in ((expected, got), (got, expected)):
            diff, total, hits = compare_detections(ours, theirs, tolerance)
            worst, compared, matched = max(worst, diff), compared + total, matched + hits
    if compared and matched < MIN_MATCHED * compared:
        raise ExportError(
            f"ONNX Runtime and PyTorch agree on {matched} of {compared} confident detections"
        )
    if not compared:
        log.warning(
            "the ONNX check compared no detections: the model finds nothing above its score "
            "threshold on the validation images used"
        )
    return worst, {"images": len(samples), "detections": compared, "matched": matched}


def compare_detections(
    expected: list[NDArray[Any]], got: list[NDArray[Any]], tolerance: float
) -> tuple[float, int, int]:
    """Match each PyTorch detection scoring clearly above the cut-offs to an ONNX one of the
    same class (IoU >= 0.99, score within tolerance); (largest score or box difference / 100,
    detections compared, matched)."""
    boxes, labels, scores = expected[:3]
    o_boxes, o_labels, o_scores = got[:3]
    if len(scores) == 0:
        return 0.0, 0, 0
    floor = float(scores.min()) + tolerance if len(scores) > 1 else 0.0  # the cut-off's edge
    worst, compared, matched = 0.0, 0, 0
    for i in np.flatnonzero(scores > floor):
        compared += 1
        same = np.flatnonzero(o_labels == labels[i])
        if same.size == 0:
            continue
        overlaps = _iou(boxes[i], o_boxes[same])
        j = same[int(overlaps.argmax())]
        score_diff = abs(float(o_scores[j]) - float(scores[i]))
        box_diff = float(np.abs(o_boxes[j] - boxes[i]).max()) / 100.0
        if overlaps.max() >= MATCH_IOU and score_diff <= tolerance:
            matched += 1
            difference = max(score_diff, box_diff)
            if len(expected) > 3:
                difference = max(difference, float(np.abs(got[3][j] - expected[3][i]).mean()))
            worst = max(worst, difference)
    return worst, compared, matched


def _iou(box: NDArray[Any], others: NDArray[Any]) -> NDArray[Any]:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    result: NDArray[Any] = inter / np.maximum(area + areas - inter, 1e-9)
    return result
