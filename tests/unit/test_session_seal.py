"""A completed model left on the volume is reported with its digest and size, so a download
off the volume checks what it got (kubectl train download)."""

from __future__ import annotations

from pathlib import Path

from kubetrain.api.report import ReportedModel, tree_digest
from kubetrain.trainer.session import _sealed


def test_a_model_on_the_volume_is_reported_with_its_digest_and_size(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x01" * 5000)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pt").write_bytes(b"\x02" * 300)
    sealed = _sealed(ReportedModel(path=str(tmp_path), format="onnx"))
    assert sealed.digest == tree_digest(tmp_path)[0] and sealed.size_bytes == 5300


def test_a_model_that_cannot_be_read_is_reported_without_a_digest(tmp_path: Path) -> None:
    missing = ReportedModel(path=str(tmp_path / "gone"), format="onnx")
    assert _sealed(missing).digest == ""
