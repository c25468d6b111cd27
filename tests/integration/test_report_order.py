"""Which of a pushed and an annotated report the operator takes: the one that reached it
later (the operator's clock for a push, the API server's for the annotation), whatever the
trainer's clock says."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetrain.api.report import ANNOTATION
from tests.integration import kubelet
from tests.integration.operator_fixtures import OperatorProcess, wait_for
from tests.integration.test_operator import Jobs, llm_job

pytestmark = pytest.mark.usefixtures("operator")


def test_the_report_that_arrived_later_wins_whatever_the_trainers_clock_says(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    jobs = Jobs(api_client, namespace, operator)
    jobs.create(llm_job("skewed"))
    pod = jobs.live_pods("skewed", 1)[0]
    name = pod.metadata.name
    env = {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}
    url, ca = env["KUBETRAIN_REPORT_URL"], env["KUBETRAIN_REPORT_CA"]
    kubelet.start(jobs.core, namespace, name)
    jobs.phase("skewed", "Running")
    token = tmp_path / "token"
    token.write_text(kubelet.report_token(jobs.core, namespace, name))

    def step(status: dict[str, Any]) -> int:
        return int((status.get("progress") or {}).get("currentStep") or 0)

    # The trainer's clock runs 70 years fast; its push is received now.
    kubelet.push(url, ca, token, time="2099-01-01T00:00:00Z", step=4, totalSteps=1000)
    jobs.until("skewed", lambda s: step(s) == 4, "the pushed report")

    # The channel goes away for it; it falls back to its annotation with a later report
    # (its clock now 70 years slow), and keeps reporting there.
    steps = itertools.count(6)

    def annotated() -> bool:
        body = {"version": 1, "time": "2000-01-01T00:00:00Z", "step": next(steps),
                "totalSteps": 1000}  # fmt: skip
        patch = {"metadata": {"annotations": {ANNOTATION: json.dumps(body)}}}
        jobs.core.patch_namespaced_pod(name, namespace, patch)
        return step(jobs.status("skewed")) >= 6

    wait_for(annotated, "the later annotated report in status", operator=operator)

    # Back on the channel, with an old clock: received last, so it wins.
    kubelet.push(url, ca, token, time="1990-01-01T00:00:00Z", step=999, totalSteps=1000)
    jobs.until("skewed", lambda s: step(s) == 999, "the later pushed report")
