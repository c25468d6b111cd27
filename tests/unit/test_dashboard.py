"""The chart's Grafana dashboard asks only for series the operator exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from kubetrain.api.status import TrainingJobStatus
from kubetrain.operator import metrics
from kubetrain.operator.reconcile.reconciler import job_sample
from kubetrain.operator.settings import Settings
from tests.unit.test_job_series import RUNNING, job

DASHBOARD = Path(__file__).parents[2] / "charts" / "kubetrain" / "files" / "dashboards"


def exported() -> set[str]:
    """Every series name the operator's registry serves, with a job being observed."""
    metrics.JOB_SERIES.observe(("nlp", "llama"), job_sample(job("llama"), RUNNING, Settings()))
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
