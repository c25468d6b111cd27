"""The per-job series, scraped by a real Prometheus on loopback during a real training run,
and every query of the chart's Grafana dashboard evaluated against it."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetrain.localcluster.ports import free_ports
from tests.e2e.test_training_e2e import ROOT, Job, tiny_lora
from tests.integration.operator_fixtures import OperatorProcess
from tests.polling import eventually

DASHBOARD = ROOT / "charts" / "kubetrain" / "files" / "dashboards" / "kubetrain.json"


class Prometheus:
    """``prometheus`` (Debian's, installed by make setup) scraping the operator every second."""

    def __init__(self, target: str, directory: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: run make setup (hack/install-system.sh)"
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "kubetrain", "honor_labels": True,
                                "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        self.log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        eventually(self._ready, timeout=30, what="Prometheus ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def query(self, expr: str, **params: str) -> list[Any]:
        path = "query_range" if "step" in params else "query"
        query = urllib.parse.urlencode({"query": expr, **params})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[Any] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(
    e2e_operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    port = e2e_operator.metrics_port  # type: ignore[attr-defined]
    server = Prometheus(f"127.0.0.1:{port}", tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def test_prometheus_sees_the_loss_curve_and_every_dashboard_panel_has_data(
    api_client: client.ApiClient,
    e2e_namespace: str,
    e2e_operator: OperatorProcess,
    prometheus: Prometheus,
) -> None:
    job = Job(api_client, e2e_namespace, "curves", e2e_operator)
    job.create(tiny_lora("curves"))
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    started = done["startTime"]
    selector = f'namespace="{e2e_namespace}",trainingjob="curves"'

    def scraped_done() -> list[Any]:
        found = prometheus.query(f"kubetrain_job_progress_ratio{{{selector}}}")
        return found if found and float(found[0]["value"][1]) == 1.0 else []

    eventually(scraped_done, timeout=30, what="progress ratio 1 in Prometheus")
    (loss,) = prometheus.query(
        f"kubetrain_job_loss{{{selector}}}", start=started, end=done["completionTime"], step="1s"
    )
    values = [float(v) for _, v in loss["values"]]
    assert len(set(values)) >= 2, "the loss moved while Prometheus watched"
    assert values[-1] < values[0], "and it went down"
    assert loss["metric"]["model_type"] == "llm" and loss["metric"]["gpu_type"] == "cpu"

    # Every panel's query is valid PromQL here; those a CPU run can feed return data.
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", e2e_namespace).replace("$job", ".*")
            if not prometheus.query(expr):
                empty.append(panel["title"])
    # No GPU here (no GPU memory), the tiny job has no evaluation split, and nothing failed.
    assert set(empty) <= {"GPU memory (rank 0)", "Validation loss", "Errors per second"}, empty
    # The checkpoint annotations: a valid query, whose series the job has.
    for annotation in dashboard["annotations"]["list"]:
        prometheus.query(
            annotation["expr"].replace("$namespace", e2e_namespace).replace("$job", ".*")
        )
    assert prometheus.query(f"kubetrain_job_latest_checkpoint_step{{{selector}}}")
