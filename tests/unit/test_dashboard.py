"""The chart's Grafana dashboard asks only for series the operator exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator import metrics
from kubetrain.operator.reconcile.samples import job_sample
from tests.unit.test_job_series import RUNNING, job

DASHBOARD = Path(__file__).parents[2] / "charts" / "kubetrain" / "files" / "dashboards"


def exported() -> set[str]:
    """Every series name the operator's registry serves, with a job being observed."""
    metrics.JOB_SERIES.observe(("nlp", "llama"), job_sample(job("llama"), RUNNING, "a100"))
    try:
        text = generate_latest().decode()
    finally:
        metrics.JOB_SERIES.forget(("nlp", "llama"))
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_bucket"} if kind == "histogram" else {name}
    return names


def test_every_panel_queries_series_the_operator_exports() -> None:
    dashboard = json.loads((DASHBOARD / "kubetrain.json").read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] == "kubetrain-jobs"
    names = exported()
    queried = set()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]  # checkpoints, as annotations
    for expr in exprs:
        queried |= set(re.findall(r"\bkubetrain_[a-z_]+\b", expr))
    assert queried, "the dashboard queries something"
    assert queried <= names, f"not exported: {sorted(queried - names)}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables


def test_the_fleet_view_has_phase_gpus_and_cost() -> None:
    dashboard = json.loads((DASHBOARD / "kubetrain.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Jobs by phase", "GPUs in use", "Training loss", "Learning rate"} <= titles
    assert TrainingJobStatus  # the per-job series follow the status models


# Fields Grafana reads that its dashboard schema leaves to the datasource or keeps from the
# legacy model: the Prometheus annotation query's options, and a query variable's text.
DATASOURCE_FIELDS = {
    "/annotations/list[0]/step", "/annotations/list[0]/titleFormat",
    "/annotations/list[0]/textFormat", "/annotations/list[0]/useValueForTime",
    "/templating/list[1]/definition", "/templating/list[2]/definition",
}  # fmt: skip


def _lost(ours: object, loaded: object, path: str = "") -> list[str]:
    """The paths of ``ours`` that did not survive loading into the schema's models."""
    if isinstance(ours, dict):
        if not isinstance(loaded, dict):
            return [path]
        found: list[str] = []
        for key, value in ours.items():
            where = f"{path}/{key}"
            found += _lost(value, loaded[key], where) if key in loaded else [where]
        return found
    if isinstance(ours, list):
        if not isinstance(loaded, list) or len(ours) != len(loaded):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, loaded, strict=True))
                for p in _lost(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if ours == loaded else [path]


def test_the_dashboard_loads_against_grafanas_dashboard_schema() -> None:
    """Loaded into the models of Grafana 10.4's dashboard schema (schemaVersion 39, Grafana's
    foundation SDK), every field of the dashboard survives, but for the datasource's own."""
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel  # noqa: PLC0415

    ours = json.loads((DASHBOARD / "kubetrain.json").read_text())
    assert ours["schemaVersion"] == 39
    model = Dashboard.from_json(ours)
    loaded = json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))
    assert set(_lost(ours, loaded)) == DATASOURCE_FIELDS
    panels = model.panels or []
    assert all(isinstance(p, Panel | RowPanel) for p in panels)
    graphs = [p for p in panels if isinstance(p, Panel)]
    assert graphs and all(p.type_val == "timeseries" and p.targets for p in graphs)
