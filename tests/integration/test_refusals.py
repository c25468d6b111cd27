"""Errors end: what the API server or the kubelet refuses for good fails the job once, with
their words in a condition and an Event; what passes by itself is retried, boundedly.

Each refusal here is the real API server's: a ValidatingAdmissionPolicy of the test's own
(matching only its namespace) refuses what a user's cluster policy would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api.base import GROUP, PLURAL, VERSION
from tests.integration import kubelet
from tests.integration.operator_fixtures import WAITING_GRACE_SECONDS, OperatorProcess
from tests.integration.test_operator import Jobs, condition, llm_job
from tests.polling import eventually

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def jobs(api_client: client.ApiClient, namespace: str, operator: OperatorProcess) -> Jobs:
    return Jobs(api_client, namespace, operator)


@contextlib.contextmanager
def refusing(api: client.ApiClient, namespace: str, resource: str, message: str) -> Iterator[None]:
    """A policy that refuses every creation of ``resource`` in ``namespace``, as a cluster's
    own admission policies do: in force before the block runs and out of force after it (the
    API server applies a policy's creation and deletion a moment after they are stored)."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"refuse-{resource}-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                 "operations": ["CREATE", "UPDATE"], "resources": [resource]}]},
            "validations": [{"expression": "false", "message": message}],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }  # fmt: skip
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    core = client.CoreV1Api(api)

    def in_force() -> bool:
        probe: dict[str, Any] = {"metadata": {"generateName": "probe-"}}
        try:
            if resource == "pods":
                probe["spec"] = {"containers": [{"name": "c", "image": "probe"}]}
                core.create_namespaced_pod(namespace, probe, dry_run="All")
            else:
                probe["spec"] = {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Gi"}}}  # fmt: skip
                core.create_namespaced_persistent_volume_claim(namespace, probe, dry_run="All")
        except ApiException as err:
            return message in (err.body or "")
        return False

    try:
        eventually(in_force, what=f"the policy refusing {resource} in force")
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
    eventually(lambda: not in_force(), what=f"the policy refusing {resource} gone")


def test_a_pod_the_api_server_refuses_for_good_fails_the_job_once_with_its_words(
    jobs: Jobs,
) -> None:
    said = "trainers in this namespace must run images from the internal registry"
    with refusing(jobs.core.api_client, jobs.ns, "pods", said):
        jobs.create(llm_job("denied"))
        status = jobs.phase("denied", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "FailedCreatePod"
    assert failed["message"].startswith("could not create Pod denied-worker-0-a1: ")
    assert said in failed["message"]
    assert jobs.pods("denied") == []
    (event,) = jobs.event("FailedCreatePod")
    assert said in event.message and event.type == "Warning"
    # The next passes add nothing: one failure, one Event, no retry.
    touch = {"metadata": {"annotations": {"touched": "yes"}}}  # a pass, same generation
    jobs.custom.patch_namespaced_custom_object(GROUP, VERSION, jobs.ns, PLURAL, "denied", touch)
    jobs.until("denied", lambda s: s.get("phase") == "Failed", "still Failed")
    assert len(jobs.events("FailedCreatePod")) == 1 and jobs.pods("denied") == []

    # The cluster's policy is gone and the user edits the job (a new generation): it runs.
    jobs.patch("denied", {"training": {"epochs": 3}})
    jobs.live_pods("denied", 1)
    jobs.until("denied", lambda s: s.get("phase") == "Pending" and s.get("attempt") == 2,
               "attempt 2 after the spec changed")  # fmt: skip


def test_a_claim_the_api_server_refuses_fails_the_job_naming_the_claim(jobs: Jobs) -> None:
    said = "volumes are provisioned by the platform team"
    with refusing(jobs.core.api_client, jobs.ns, "persistentvolumeclaims", said):
        jobs.create(llm_job("noclaim"), storage=False)
        status = jobs.phase("noclaim", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "FailedApply"
    assert "PersistentVolumeClaim noclaim-checkpoints" in failed["message"]
    assert said in failed["message"]
    assert said in jobs.event("FailedApply")[0].message


def test_a_container_that_cannot_pull_its_image_shows_at_once_and_fails_after_the_grace(
    jobs: Jobs,
) -> None:
    jobs.create(llm_job("nopull", image="registry.invalid/kubetrain/trainer:missing"))
    (pod,) = jobs.live_pods("nopull", 1)
    said = 'Back-off pulling image "registry.invalid/kubetrain/trainer:missing"'
    kubelet.waiting(jobs.core, jobs.ns, pod.metadata.name, "ImagePullBackOff", said)
    status = jobs.until(
        "nopull",
        lambda s: any(c["type"] == "ContainersWaiting" for c in s.get("conditions", [])),
        "ContainersWaiting",
    )
    waiting = condition(status, "ContainersWaiting")
    assert (waiting["status"], waiting["reason"]) == ("True", "ImagePullBackOff")
    assert said in waiting["message"] and "worker 0" in waiting["message"]
    assert status["phase"] == "Pending"
    assert said in jobs.event("ImagePullBackOff")[0].message

    status = jobs.phase("nopull", "Failed", timeout=30 + WAITING_GRACE_SECONDS)
    failed = condition(status, "Failed")
    assert failed["reason"] == "ImagePullBackOff" and said in failed["message"]
    assert "containerWaitingGraceSeconds" in failed["message"]
    eventually(lambda: not [p for p in jobs.pods("nopull") if not p.metadata.deletion_timestamp],
               what="the stuck worker deleted")  # fmt: skip
