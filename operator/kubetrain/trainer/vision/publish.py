"""The trained model on the job's volume: PyTorch weights, ONNX, and a description.

``model.pt`` is the torchvision model's state dict (build the architecture with
``numClasses`` classes, plus one for background in a detector, and load it); ``model.onnx``
is described in ``export``; ``model.json`` says which architecture, classes, input size and
normalisation, the best epoch's metrics, and how closely the ONNX model matched.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn

from kubetrain.api import TrainingJobSpec
from kubetrain.api.report import ReportedModel
from kubetrain.trainer import outputs
from kubetrain.trainer.session import TrainingSession
from kubetrain.trainer.vision.dataset import VisionDataset
from kubetrain.trainer.vision.export import ExportError, export
from kubetrain.trainer.vision.options import Plan, VisionOptions
from kubetrain.trainer.vision.state import Progress
from kubetrain.trainer.vision.tasks import MEAN, STD

log = logging.getLogger(__name__)

VERIFY_IMAGES = 2


def publish_model(
    module: nn.Module,
    spec: TrainingJobSpec,
    plan: Plan,
    *,
    progress: Progress,
    session: TrainingSession,
    val_set: VisionDataset,
    options: VisionOptions,
    summary: str,
) -> tuple[ReportedModel, str]:
    """Write the model (and its ONNX export, when asked for) and publish it atomically;
    returns the reference and a note for the final message."""
    vision = spec.vision
    assert vision is not None
    staged = outputs.staging_dir(session.env.output_dir)
    module = module.to("cpu").eval()
    torch.save(module.state_dict(), staged / "model.pt")
    best = next((h for h in progress.history if int(h["epoch"]) == progress.best_epoch), {})
    description: dict[str, Any] = {
        "task": plan.task.value,
        "architecture": plan.arch.name,
        "classes": plan.classes,
        "numClasses": plan.num_classes,
        "inputSize": {"width": plan.size[0], "height": plan.size[1]},
        "normalisation": {"scale": 1 / 255, "mean": MEAN, "std": STD},
        "backgroundLabel": 0 if plan.arch.detector else None,
        "bestEpoch": progress.best_epoch,
        "metrics": best,
        "files": {"weights": "model.pt"},
    }
    fmt, note = "pytorch", ""
    if vision.export is not None:
        samples = (
            torch.stack(
                [val_set[(0, i)][0] for i in range(min(VERIFY_IMAGES, len(val_set)))]
            ).float()
            / 255
        )
        try:
            exported = export(
                module,
                plan.arch,
                vision.export,
                staged / "model.onnx",
                samples=samples,
                tolerance=options.onnx_tolerance,
            )
        except ExportError as err:
            log.error("%s; publishing the PyTorch weights only", err)
            (staged / "model.onnx").unlink(missing_ok=True)
            description["onnxError"] = str(err)
            note = f"ONNX export failed: {err}"
        else:
            fmt = "onnx+pytorch"
            description["files"]["onnx"] = "model.onnx"
            description["onnx"] = exported.describe()
            session.metrics["onnxMaxDifference"] = exported.max_difference
    (staged / "model.json").write_text(json.dumps(description, indent=1, default=str))
    model = outputs.publish(
        staged, session.env.output_dir, format=fmt, summary={"summary": summary}
    )
    return model, note
