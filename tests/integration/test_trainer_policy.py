"""The trainer admission policy on the real API server, with a trainer's own Pod-bound token:
a trainer may write its progress report and nothing else the operator reads from its Pod."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api.children import ANNOTATION_RESUME_FROM, ANNOTATION_WORKERS
from kubetrain.api.report import ANNOTATION
from kubetrain.localcluster import ControlPlane
from tests.integration import kubelet
from tests.integration.operator_fixtures import OperatorProcess
from tests.integration.test_operator import Jobs, llm_job

pytestmark = pytest.mark.usefixtures("operator")


def refused(patch: Callable[[], Any]) -> str:
    """The API server's message for a refused write (the test fails if it was admitted)."""
    with pytest.raises(ApiException) as err:
        patch()
    assert err.value.status == 403, err.value.body
    return str(json.loads(err.value.body)["message"])


def test_a_trainer_may_write_only_its_progress_annotation(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    cluster: ControlPlane,
) -> None:
    jobs = Jobs(api_client, namespace, operator)
    jobs.create(llm_job("sizing"))
    pod = jobs.live_pods("sizing", 1)[0]
    name = pod.metadata.name
    kubelet.start(jobs.core, namespace, name)
    jobs.phase("sizing", "Running")
    trainer = kubelet.as_trainer(cluster, jobs.core, pod)
    before = jobs.core.read_namespaced_pod(name, namespace).metadata.annotations

    def patch(annotations: dict[str, str | None]) -> Callable[[], Any]:
        body = {"metadata": {"annotations": annotations}}
        return lambda: trainer.patch_namespaced_pod(name, namespace, body)

    report = json.dumps({"version": 1, "time": kubelet._now(), "step": 1, "totalSteps": 10})
    patch({ANNOTATION: report})()  # its report: admitted
    patch({ANNOTATION: None})()  # and taking it back
    message = refused(patch({ANNOTATION_WORKERS: "3"}))  # how the operator sizes the group
    assert "only its progress report" in message, message
    refused(patch({ANNOTATION_RESUME_FROM: "step-1"}))  # where the next attempt resumes
    refused(patch({ANNOTATION_RESUME_FROM: None}))
    refused(patch({"kubetrain.io/anything-new": "x"}))
    refused(patch({ANNOTATION: report, ANNOTATION_WORKERS: "3"}))  # not hidden in a report

    after = jobs.core.read_namespaced_pod(name, namespace).metadata.annotations
    assert after == before
    status = jobs.status("sizing")
    assert status["phase"] == "Running" and status["attempt"] == 1
    assert status.get("restarts", 0) == 0
