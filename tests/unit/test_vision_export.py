"""ONNX export checked under ONNX Runtime, and how detections are matched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kubetrain.api import ExportConfig, VisionTask
from kubetrain.trainer.vision import catalog, models
from kubetrain.trainer.vision.export import ExportError, compare_detections, export


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_classifier_exports_with_its_normalisation(tmp_path: Path, dynamic: bool) -> None:
    torch.manual_seed(0)
    arch = catalog.resolve(VisionTask.CLASSIFICATION, "mobilenet_v3_small")
    model = models.build(arch, 3, (32, 32))
    samples = torch.rand(2, 3, 32, 32)
    config = ExportConfig(dynamic_batch=dynamic)
    done = export(model, arch, config, tmp_path / "m.onnx", samples=samples, tolerance=1e-3)
    assert done.inputs == {"images": ["batch" if dynamic else 1, 3, 32, 32]}
    assert done.outputs == ["logits"] and done.max_difference < 1e-4
    assert json.dumps(done.describe())  # goes into model.json as it is


class Noisy(nn.Module):
    """Logits with noise drawn inside the graph: ONNX Runtime draws other noise."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((2, 3)) + torch.rand(images.shape[0], 3)


def test_a_mismatch_beyond_the_tolerance_fails(tmp_path: Path) -> None:
    arch = catalog.resolve(VisionTask.CLASSIFICATION, "mobilenet_v3_small")
    with pytest.raises(ExportError, match="differ from PyTorch's"):
        export(Noisy(), arch, ExportConfig(), tmp_path / "m.onnx",
               samples=torch.rand(1, 3, 32, 32), tolerance=1e-3)  # fmt: skip


def detections(rows: list[tuple[float, float, float, float, int, float]]) -> list[np.ndarray]:
    data = np.array(rows, np.float32).reshape(-1, 6)
    return [data[:, :4], data[:, 4].astype(np.int64), data[:, 5]]


def test_detections_match_by_class_box_and_score() -> None:
    expected = detections([(0, 0, 10, 10, 1, 0.9), (20, 20, 30, 30, 0, 0.8), (5, 5, 9, 9, 0, 0.1)])
    same = [a.copy() for a in expected]
    assert compare_detections(expected, same, 1e-3)[1:] == (2, 2)  # the lowest is the cut-off
    relabelled = detections(
        [(0, 0, 10, 10, 0, 0.9), (20, 20, 30, 30, 0, 0.8), (5, 5, 9, 9, 0, 0.1)]
    )
    assert compare_detections(expected, relabelled, 1e-3)[1:] == (2, 1)
    moved = detections([(0, 0, 10, 10, 1, 0.9), (21, 20, 31, 30, 0, 0.8)])
    assert compare_detections(expected, moved, 1e-3)[1:] == (2, 1)
    assert compare_detections(detections([]), same, 1e-3) == (0.0, 0, 0)
    assert compare_detections(same, detections([]), 1e-3)[1:] == (2, 0)  # the other way round
