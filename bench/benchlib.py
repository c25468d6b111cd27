"""What the operator benchmarks share: the job they apply and the operator's own counters."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from kubetrain.api.base import GROUP, VERSION


def job(name: str) -> dict[str, Any]:
    """A one-worker cpu job on an existing claim: nothing for a provisioner to do."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "modelType": "llm",
            "dataset": {"synthetic": {"samples": 64}},
            "llm": {"baseModel": "random://llama-tiny"},
            "resources": {"gpuType": "cpu"},
            "checkpoint": {"existingClaimName": "shared"},
        },
    }


def operator_metrics(port: int) -> dict[str, float]:
    """API requests the reconciler sent, by verb; ``status``: its status writes;
    ``token_reviews`` and ``pushed``: the report channel's TokenReviews and reports."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kubetrain_api_requests_total{"):
            out[line.split('verb="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kubetrain_status_writes_total "):
            out["status"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kubetrain_token_reviews_total "):
            out["token_reviews"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kubetrain_pushed_reports_total{"):
            out["pushed"] = out.get("pushed", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def operator_argv(kubeconfig: Path, metrics_port: int, *more: str) -> list[str]:
    """The operator as the benchmarks run it: one standalone replica, metrics on loopback."""
    return [
        sys.executable, "-m", "kubetrain", "--kubeconfig", str(kubeconfig), "--standalone",
        "--liveness", "", "--metrics-port", str(metrics_port), *more,
    ]  # fmt: skip
