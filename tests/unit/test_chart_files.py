"""The chart carries copies of generated or shared manifests; they must not drift."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_chart_clusterrole_is_the_one_in_config_rbac() -> None:
    source = ROOT / "config" / "rbac" / "operator-clusterrole.yaml"
    copy = ROOT / "charts" / "kubetrain" / "files" / "rbac" / "operator-clusterrole.yaml"
    assert copy.read_text() == source.read_text(), "run `make crds` to refresh the chart's copy"
