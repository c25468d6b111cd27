"""The chart carries copies of generated or shared manifests; they must not drift."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubetrain.operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_chart_clusterrole_is_the_one_in_config_rbac() -> None:
    source = ROOT / "config" / "rbac" / "operator-clusterrole.yaml"
    copy = ROOT / "charts" / "kubetrain" / "files" / "rbac" / "operator-clusterrole.yaml"
    assert copy.read_text() == source.read_text(), "run `make crds` to refresh the chart's copy"


def test_the_chart_trainer_policy_is_the_one_in_config() -> None:
    source = ROOT / "config" / "trainer-policy.yaml"
    copy = ROOT / "charts" / "kubetrain" / "files" / "trainer-policy.yaml"
    assert copy.read_text() == source.read_text(), "run `make crds` to refresh the chart's copy"


def test_the_plain_priorityclasses_are_the_charts_and_the_operators_defaults() -> None:
    plain = {
        doc["description"].split()[-1].rstrip("."): doc
        for doc in yaml.safe_load_all((ROOT / "config" / "priorityclasses.yaml").read_text())
    }
    values = yaml.safe_load((ROOT / "charts" / "kubetrain" / "values.yaml").read_text())
    chart = values["priorityClasses"]
    assert set(plain) == {"high", "normal", "low"}
    for level, doc in plain.items():
        assert doc["metadata"]["name"] == chart[level]["name"] == Settings().priority_classes[level]
        assert doc["value"] == chart[level]["value"]
        assert doc["preemptionPolicy"] == chart[level].get(
            "preemptionPolicy", "PreemptLowerPriority"
        )
