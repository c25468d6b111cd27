"""The operator against the real control plane; the test plays kubelet and trainer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.report import ANNOTATION, EXIT_PERMANENT
from kubetrain.localcluster.ports import free_ports
from kubetrain.trainer.reporter import (
    Channel,
    ChannelError,
    ChannelSink,
    PodAnnotationSink,
    PushSink,
)
from tests.integration import kubelet
from tests.integration.operator_fixtures import OperatorProcess, wait_for

pytestmark = pytest.mark.usefixtures("operator")


# -- helpers ---------------------------------------------------------------------------------


def bound_claim(core: client.CoreV1Api, namespace: str, claim: str, *, create_claim: bool) -> None:
    """A static PV pre-bound to ``namespace/claim`` (class ``manual``), and the claim if asked."""
    pv_name = f"pv-{namespace}-{claim}"[:63].rstrip("-")
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv_name),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "100Gi"},
                access_modes=["ReadWriteOnce", "ReadWriteMany"],
                storage_class_name="manual",
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/{pv_name}"),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=claim),
            ),
        )
    )
    if create_claim:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name=claim),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    storage_class_name="manual",
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )


def llm_job(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "modelType": "llm",
        "dataset": {"synthetic": {"samples": 64}},
        "llm": {"baseModel": "random://llama-tiny", "lora": {"rank": 8, "alpha": 16}},
        "training": {"epochs": 2, "batchSize": 4, "learningRate": 2e-4},
        "resources": {"gpuType": "a100", "workers": 1, "gpusPerWorker": 1},
        "checkpoint": {"storageClassName": "manual", "size": "1Gi"},
    }
    for key, value in overrides.items():
        if key in ("resources", "training", "checkpoint"):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


class Jobs:
    """TrainingJobs of one namespace, with the waits the tests need."""

    def __init__(self, api: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.ns, self.operator = namespace, operator

    def create(self, body: dict[str, Any], *, storage: bool = True) -> None:
        if storage:
            bound_claim(
                self.core, self.ns, f"{body['metadata']['name']}-checkpoints", create_claim=False
            )
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return job

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def until(
        self, name: str, check: Callable[[dict[str, Any]], Any], what: str, timeout: float = 30
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if check(status) else None

        result: dict[str, Any] = wait_for(probe, f"{name}: {what}", timeout, self.operator)
        return result

    def phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return self.until(name, lambda s: s.get("phase") == phase, f"phase {phase}", timeout)

    def pods(self, name: str) -> list[client.V1Pod]:
        pods: list[client.V1Pod] = self.core.list_namespaced_pod(
            self.ns, label_selector=f"kubetrain.io/job-name={name}"
        ).items
        return sorted(pods, key=lambda p: p.metadata.name)

    def live_pods(self, name: str, count: int, attempt: int | None = None) -> list[client.V1Pod]:
        def probe() -> list[client.V1Pod] | None:
            pods = [p for p in self.pods(name) if p.metadata.deletion_timestamp is None]
            if attempt is not None:
                pods = [
                    p for p in pods if p.metadata.labels["kubetrain.io/attempt"] == str(attempt)
                ]
            return pods if len(pods) == count else None

        result: list[client.V1Pod] = wait_for(probe, f"{count} Pods of {name}", 30, self.operator)
        return result

    def events(self, reason: str) -> list[client.CoreV1Event]:
        events: list[client.CoreV1Event] = self.core.list_namespaced_event(self.ns).items
        return [e for e in events if e.reason == reason]

    def event(self, reason: str) -> list[client.CoreV1Event]:
        """The Events of ``reason`` once there is one (posted just after the status write)."""
        found: list[client.CoreV1Event] = wait_for(
            lambda: self.events(reason), f"an Event {reason}", 30, self.operator
        )
        return found


@pytest.fixture
def jobs(api_client: client.ApiClient, namespace: str, operator: OperatorProcess) -> Jobs:
    return Jobs(api_client, namespace, operator)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


def _env(pod: client.V1Pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}


def _creation_failed(status: dict[str, Any]) -> bool:
    return any(
        c["type"] == "PodCreationFailed" and c["status"] == "True"
        for c in status.get("conditions", [])
    )


def _get(read: Callable[[], Any]) -> Any:
    """What ``read`` returns, or None on a 404."""
    try:
        return read()
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _run_all(jobs: Jobs, name: str, pods: list[client.V1Pod]) -> None:
    for pod in pods:
        kubelet.start(jobs.core, jobs.ns, pod.metadata.name)


# -- tests -----------------------------------------------------------------------------------


def test_a_job_gets_gpu_pods_progress_and_completes(jobs: Jobs) -> None:
    bound_claim(jobs.core, jobs.ns, "data", create_claim=True)
    jobs.create(
        llm_job(
            "llama",
            dataset={"pvc": {"claimName": "data", "subPath": "train.jsonl"}},
            resources={"gpuType": "a100", "workers": 2, "gpusPerWorker": 2},
            priority="high",
        )
    )
    pods = jobs.live_pods("llama", 2)
    worker0 = pods[0]
    spec = worker0.spec
    container = spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert spec.node_selector == {"kubetrain.io/test-pool": "fake"}
    terms = spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert terms.node_selector_terms[0].match_expressions[0].values == ["NVIDIA-A100-SXM4-80GB"]
    assert any(t.key == "nvidia.com/gpu" for t in spec.tolerations)
    assert spec.priority_class_name == "kubetrain-high"
    assert spec.security_context.run_as_non_root is True
    assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.security_context.allow_privilege_escalation is False
    assert spec.restart_policy == "Never"
    env = _env(worker0)
    assert env["MASTER_ADDR"] == "llama-worker-0.llama-workers"
    assert (env["WORLD_SIZE"], env["NNODES"], env["NPROC_PER_NODE"]) == ("4", "2", "2")
    assert env["NODE_RANK"] == "0" and _env(pods[1])["NODE_RANK"] == "1"
    assert env["RESUME_FROM"] == "latest"
    assert env["KUBETRAIN_DATASET_PATH"] == "/data/train.jsonl"
    assert json.loads(env["KUBETRAIN_CONFIG"])["llm"]["lora"]["rank"] == 8
    assert worker0.metadata.labels["kubetrain.io/attempt"] == "1"

    service = jobs.core.read_namespaced_service("llama-workers", jobs.ns)
    assert service.spec.cluster_ip == "None"
    claim = jobs.core.read_namespaced_persistent_volume_claim("llama-checkpoints", jobs.ns)
    assert claim.spec.access_modes == ["ReadWriteMany"]
    rbac = client.RbacAuthorizationV1Api(jobs.core.api_client)
    rule = rbac.read_namespaced_role("kubetrain-trainer", jobs.ns).rules[0]  # the namespace's
    assert (rule.resources, sorted(rule.verbs)) == (["pods"], ["get", "patch"])
    assert spec.service_account_name == "kubetrain-trainer"

    # The real scheduler placed them on the A100 node.
    placed = wait_for(
        lambda: all(p.spec.node_name == "fake-a100-0" for p in jobs.live_pods("llama", 2)),
        "Pods bound to the A100 node",
    )
    assert placed
    status = jobs.until("llama", lambda s: s.get("resourceAllocation"), "allocation")
    assert status["resourceAllocation"]["summary"] == "a100:2x2"
    assert status["estimatedCost"]["hourlyUSD"] == pytest.approx(12.0)

    _run_all(jobs, "llama", pods)
    jobs.phase("llama", "Running")
    kubelet.report(
        jobs.core,
        jobs.ns,
        "llama-worker-0-a1",
        epoch=1,
        totalEpochs=2,
        step=50,
        totalSteps=100,
        loss=1.25,
        learningRate=1e-4,
        throughput=1500.0,
        throughputUnit="tokens/s",
        checkpoints=[kubelet.checkpoint("step-50", 1, 50, 1.25)],
    )
    status = jobs.until(
        "llama", lambda s: (s.get("progress") or {}).get("currentStep") == 50, "progress"
    )
    assert status["progress"]["percentage"] == 50.0
    assert status["metrics"]["currentLoss"] == 1.25
    assert status["metrics"]["bestLoss"] == 1.25
    assert status["latestCheckpoint"] == "step-50"
    assert status["checkpoints"][0]["path"] == "/checkpoints/step-50"

    kubelet.report(
        jobs.core,
        jobs.ns,
        "llama-worker-0-a1",
        epoch=2,
        totalEpochs=2,
        step=90,
        totalSteps=100,
        loss=1.5,
    )
    status = jobs.until("llama", lambda s: s["progress"]["currentStep"] == 90, "second report")
    assert status["metrics"]["bestLoss"] == 1.25  # the best loss is kept

    kubelet.report(
        jobs.core,
        jobs.ns,
        "llama-worker-0-a1",
        state="completed",
        epoch=2,
        totalEpochs=2,
        step=100,
        totalSteps=100,
        loss=0.9,
        model={"path": "/checkpoints/output/adapter", "format": "peft-adapter"},
    )
    for pod in pods:
        kubelet.finish(jobs.core, jobs.ns, pod.metadata.name, 0)
    status = jobs.phase("llama", "Completed")
    assert status["progress"]["percentage"] == 100.0
    assert status["model"] == {
        "claimName": "llama-checkpoints",
        "path": "/checkpoints/output/adapter",
        "format": "peft-adapter",
    }
    assert status["completionTime"]
    completed = condition(status, "Completed")
    assert completed["status"] == "True"
    jobs.event("TrainingSucceeded")


def test_an_unschedulable_job_is_queued_with_the_schedulers_reason(jobs: Jobs) -> None:
    jobs.create(llm_job("big", resources={"gpuType": "h100", "gpusPerWorker": 16}))
    status = jobs.phase("big", "Queued")
    queued = condition(status, "Queued")
    assert "nvidia.com/gpu" in queued["message"]
    assert queued["reason"] == "Unschedulable"


def test_pods_the_api_server_refuses_are_a_condition_and_retried_once_admitted(
    jobs: Jobs,
) -> None:
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-pods"),
        spec=client.V1ResourceQuotaSpec(hard={"pods": "0"}),
    )
    jobs.core.create_namespaced_resource_quota(jobs.ns, quota)
    jobs.create(llm_job("refused"))
    status = jobs.until(
        "refused",
        _creation_failed,
        "a PodCreationFailed condition",
    )
    refused = condition(status, "PodCreationFailed")
    assert refused["reason"] == "FailedCreatePod"
    assert refused["message"].startswith("could not create Pod refused-worker-0-a1: ")
    assert "no-pods" in refused["message"]  # the API server's reason names the quota
    assert status["phase"] == "Pending"
    assert "no-pods" in jobs.event("FailedCreatePod")[0].message
    assert jobs.pods("refused") == []

    jobs.core.delete_namespaced_resource_quota("no-pods", jobs.ns)
    jobs.live_pods("refused", 1)  # the operator kept retrying (backoff from 5 s)
    status = jobs.until(
        "refused",
        lambda s: condition(s, "PodCreationFailed")["status"] == "False",
        "PodCreationFailed cleared",
    )
    assert condition(status, "PodCreationFailed")["reason"] == "PodsCreated"
    assert len(jobs.events("FailedCreatePod")) == 1  # one Event per refusal, not per retry


def test_children_are_kept_in_their_desired_state_and_a_resize_restarts_the_group(
    jobs: Jobs,
) -> None:
    rbac = client.RbacAuthorizationV1Api(jobs.core.api_client)
    jobs.create(llm_job("elastic"))
    (pod,) = jobs.live_pods("elastic", 1)
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    jobs.phase("elastic", "Running")

    # Someone deletes the trainers' Role: the next pass (woken by the watch) applies it again.
    rbac.delete_namespaced_role("kubetrain-trainer", jobs.ns)
    role = wait_for(
        lambda: _get(lambda: rbac.read_namespaced_role("kubetrain-trainer", jobs.ns)),
        "the Role recreated",
        operator=jobs.operator,
    )
    assert role.rules[0].verbs == ["get", "patch"]

    # From one worker to two: a new attempt of two, and a headless Service for them.
    jobs.patch("elastic", {"resources": {"workers": 2}})
    status = jobs.until("elastic", lambda s: s.get("attempt") == 2, "attempt 2 after the resize")
    assert (status.get("restarts", 0), status.get("failures", 0)) == (0, 0)
    assert jobs.events("Resized")
    kubelet.terminate(jobs.core, jobs.ns, pod.metadata.name)  # worker 0 checkpoints and goes
    pods = jobs.live_pods("elastic", 2, attempt=2)
    assert [p.metadata.name for p in pods] == ["elastic-worker-0-a2", "elastic-worker-1-a2"]
    assert _env(pods[0])["MASTER_ADDR"] == "elastic-worker-0.elastic-workers"
    service = jobs.core.read_namespaced_service("elastic-workers", jobs.ns)
    assert service.spec.cluster_ip == "None"

    jobs.core.delete_namespaced_service("elastic-workers", jobs.ns)
    wait_for(
        lambda: _get(lambda: jobs.core.read_namespaced_service("elastic-workers", jobs.ns)),
        "the Service recreated",
        operator=jobs.operator,
    )


def test_pods_of_an_earlier_job_with_the_same_name_are_never_counted(jobs: Jobs) -> None:
    bound_claim(jobs.core, jobs.ns, "kept-checkpoints", create_claim=True)
    kept = {"existingClaimName": "kept-checkpoints"}
    jobs.create(llm_job("again", checkpoint=kept), storage=False)
    (old,) = jobs.live_pods("again", 1)
    # The old worker finished, and something (here: a finalizer) keeps its Pod around.
    jobs.core.patch_namespaced_pod(
        old.metadata.name, jobs.ns, {"metadata": {"finalizers": ["kubetrain.io/test-hold"]}}
    )
    kubelet.start(jobs.core, jobs.ns, old.metadata.name)
    kubelet.finish(jobs.core, jobs.ns, old.metadata.name, 0)
    jobs.phase("again", "Completed")
    jobs.custom.delete_namespaced_custom_object(GROUP, VERSION, jobs.ns, PLURAL, "again")
    wait_for(lambda: not _get(lambda: jobs.get("again")), "the first job gone")

    jobs.create(llm_job("again", checkpoint=kept), storage=False)
    status = jobs.until(
        "again",
        _creation_failed,
        "the taken Pod name reported",
    )
    assert status["phase"] == "Pending", status  # not Completed by the old job's Pod
    message = condition(status, "PodCreationFailed")["message"]
    assert "belongs to another owner" in message

    jobs.core.patch_namespaced_pod(old.metadata.name, jobs.ns, {"metadata": {"finalizers": None}})
    wait_for(
        lambda: [p for p in jobs.pods("again") if p.metadata.deletion_timestamp is None],
        "the new job's own Pod",
        timeout=60,
        operator=jobs.operator,
    )
    assert jobs.status("again")["phase"] != "Completed"


def test_an_unknown_gpu_type_fails_at_once_listing_the_known_ones(jobs: Jobs) -> None:
    jobs.create(llm_job("tpu", resources={"gpuType": "tpu-v5"}), storage=False)
    status = jobs.phase("tpu", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "UnknownGPUType"
    assert "spec.resources.gpuType: 'tpu-v5'" in failed["message"]
    assert "a100, cpu, h100" in failed["message"]
    assert jobs.pods("tpu") == []
    jobs.event("UnknownGPUType")

    jobs.patch("tpu", {"resources": {"gpuType": "h100"}})  # fixing the spec cures it
    bound_claim(jobs.core, jobs.ns, "tpu-checkpoints", create_claim=False)
    jobs.live_pods("tpu", 1)


def _stop(jobs: Jobs, name: str) -> None:
    jobs.patch(name, {"suspend": True})
    jobs.phase(name, "Stopping")
    for pod in jobs.pods(name):
        if pod.metadata.deletion_timestamp is not None:
            kubelet.terminate(jobs.core, jobs.ns, pod.metadata.name)
    jobs.phase(name, "Stopped")


def test_suspend_stops_and_resume_continues_from_a_checkpoint(jobs: Jobs) -> None:
    jobs.create(llm_job("pausable"))
    pod = jobs.live_pods("pausable", 1)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    kubelet.report(
        jobs.core,
        jobs.ns,
        "pausable-worker-0-a1",
        epoch=1,
        totalEpochs=2,
        step=20,
        totalSteps=40,
        loss=2.0,
        checkpoints=[
            kubelet.checkpoint("step-10", 1, 10, 2.5),
            kubelet.checkpoint("step-20", 1, 20, 2.0),
        ],
    )
    jobs.until("pausable", lambda s: s.get("latestCheckpoint") == "step-20", "checkpoints")

    _stop(jobs, "pausable")
    status = jobs.status("pausable")
    assert [c["id"] for c in status["checkpoints"]] == ["step-10", "step-20"]
    assert jobs.core.read_namespaced_persistent_volume_claim("pausable-checkpoints", jobs.ns)
    assert "latest checkpoint step-20" in condition(status, "Suspended")["message"]

    jobs.patch("pausable", {"suspend": False})
    pod = jobs.live_pods("pausable", 1, attempt=2)[0]
    assert _env(pod)["RESUME_FROM"] == "latest"
    jobs.event("Resumed")

    _stop(jobs, "pausable")
    jobs.patch("pausable", {"suspend": False, "resumeFrom": "step-10"})
    pod = jobs.live_pods("pausable", 1, attempt=3)[0]
    assert _env(pod)["RESUME_FROM"] == "step-10"

    _stop(jobs, "pausable")
    jobs.patch("pausable", {"suspend": False, "resumeFrom": "step-99"})
    status = jobs.phase("pausable", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "CheckpointNotFound"
    assert "available: step-10, step-20" in failed["message"]
    assert [c["id"] for c in status["checkpoints"]] == ["step-10", "step-20"]  # nothing lost


def test_a_pod_deleted_by_someone_else_is_replaced_and_counted_as_a_restart(jobs: Jobs) -> None:
    jobs.create(llm_job("fragile", runPolicy={"backoffLimit": 0}))
    pod = jobs.live_pods("fragile", 1)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    jobs.phase("fragile", "Running")

    jobs.core.delete_namespaced_pod(pod.metadata.name, jobs.ns)  # e.g. preemption, a drain
    kubelet.terminate(jobs.core, jobs.ns, pod.metadata.name)
    replacement = jobs.live_pods("fragile", 1, attempt=2)[0]
    assert _env(replacement)["RESUME_FROM"] == "latest"
    status = jobs.until("fragile", lambda s: s.get("restarts") == 1, "a restart counted")
    assert status.get("failures", 0) == 0  # not held against backoffLimit 0
    jobs.event("WorkerLost")


def test_trainer_failures_are_retried_then_fail_past_the_backoff_limit(jobs: Jobs) -> None:
    jobs.create(llm_job("flaky", runPolicy={"backoffLimit": 1}))
    pod = jobs.live_pods("flaky", 1, attempt=1)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    kubelet.finish(jobs.core, jobs.ns, pod.metadata.name, 1, "CUDA error: out of memory")
    jobs.until("flaky", lambda s: s.get("failures") == 1, "first failure counted")
    jobs.event("TrainerFailed")

    # The failed Pod is deleted (at once: it has terminated) and attempt 2 replaces it.
    pod = jobs.live_pods("flaky", 1, attempt=2)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    kubelet.finish(
        jobs.core, jobs.ns, pod.metadata.name, 2, "dataset /data/x.jsonl has 3 usable samples"
    )
    status = jobs.phase("flaky", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "exited with code 2: dataset /data/x.jsonl has 3 usable samples" in failed["message"]
    assert "backoffLimit (1)" in failed["message"]


def test_a_bad_progress_report_is_ignored_with_a_warning(jobs: Jobs) -> None:
    jobs.create(llm_job("noisy"))
    pod = jobs.live_pods("noisy", 1)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    kubelet.report(
        jobs.core,
        jobs.ns,
        "noisy-worker-0-a1",
        epoch=1,
        totalEpochs=2,
        step=5,
        totalSteps=10,
        loss=1.0,
    )
    jobs.until("noisy", lambda s: (s.get("progress") or {}).get("currentStep") == 5, "good report")

    kubelet.set_annotation(
        jobs.core,
        jobs.ns,
        "noisy-worker-0-a1",
        '{"version": 1, "time": "2026-01-01T00:00:00Z", "loss": 1e999}',
    )
    wait_for(
        lambda: jobs.events("InvalidProgressReport"),
        "a Warning for the bad report",
        operator=jobs.operator,
    )
    kubelet.set_annotation(jobs.core, jobs.ns, "noisy-worker-0-a1", "x" * 40_000)
    wait_for(
        lambda: len(jobs.events("InvalidProgressReport")) >= 2, "a Warning for the oversized report"
    )
    warning = jobs.events("InvalidProgressReport")[0]
    assert warning.type == "Warning"
    status = jobs.status("noisy")
    assert status["progress"]["currentStep"] == 5 and status["metrics"]["currentLoss"] == 1.0
    assert status["phase"] == "Running"


def test_a_restarted_operator_makes_no_duplicates_and_carries_on(
    jobs: Jobs, operator: OperatorProcess
) -> None:
    jobs.create(llm_job("steady", resources={"workers": 2, "gpuType": "a100"}))
    pods = jobs.live_pods("steady", 2)
    _run_all(jobs, "steady", pods)
    jobs.phase("steady", "Running")

    operator.kill()
    kubelet.report(
        jobs.core,
        jobs.ns,
        "steady-worker-0-a1",
        epoch=1,
        totalEpochs=1,
        step=7,
        totalSteps=10,
        loss=0.5,
    )
    operator.start()
    status = jobs.until(
        "steady",
        lambda s: (s.get("progress") or {}).get("currentStep") == 7,
        "progress after restart",
    )
    assert status["phase"] == "Running"
    assert [p.metadata.uid for p in jobs.live_pods("steady", 2)] == [p.metadata.uid for p in pods]
    assert status.get("restarts", 0) == 0 and status["attempt"] == 1


def test_a_trainer_token_may_patch_only_its_own_pod(jobs: Jobs, cluster: Any) -> None:
    jobs.create(llm_job("scoped", resources={"workers": 2, "gpuType": "a100"}))
    pods = jobs.live_pods("scoped", 2)
    as_trainer = kubelet.as_trainer(cluster, jobs.core, pods[0])

    kubelet.report(
        as_trainer, jobs.ns, "scoped-worker-0-a1", step=1, totalSteps=10
    )  # own Pod's annotation: allowed
    # The other worker's Pod, of the same job and ServiceAccount: refused by the policy.
    with pytest.raises(ApiException) as sibling:
        kubelet.report(as_trainer, jobs.ns, "scoped-worker-1-a1", step=1, totalSteps=10)
    assert sibling.value.status == 403 and "only the Pod its token is bound to" in str(
        sibling.value.body
    )
    with pytest.raises(ApiException) as relabel:  # its own Pod, but more than annotations
        as_trainer.patch_namespaced_pod(
            "scoped-worker-0-a1", jobs.ns, {"metadata": {"labels": {"kubetrain.io/attempt": "9"}}}
        )
    assert relabel.value.status == 403 and "only its Pod's annotations" in str(relabel.value.body)
    jobs.core.create_namespaced_pod(
        jobs.ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="unrelated"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]),
        ),
    )
    with pytest.raises(ApiException) as other:
        as_trainer.patch_namespaced_pod(
            "unrelated", jobs.ns, {"metadata": {"annotations": {"a": "b"}}}
        )
    assert other.value.status == 403
    with pytest.raises(ApiException) as secrets:
        as_trainer.list_namespaced_secret(jobs.ns)
    assert secrets.value.status == 403
    with pytest.raises(ApiException) as create:
        as_trainer.create_namespaced_pod(
            jobs.ns,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="x"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]),
            ),
        )
    assert create.value.status == 403


def test_deleting_a_job_removes_its_children(jobs: Jobs) -> None:
    jobs.create(llm_job("shortlived", resources={"workers": 2, "gpuType": "a100"}))
    jobs.live_pods("shortlived", 2)
    jobs.custom.delete_namespaced_custom_object(GROUP, VERSION, jobs.ns, PLURAL, "shortlived")
    for pod in jobs.pods("shortlived"):  # no kubelet: finish the graceful deletions
        with contextlib.suppress(ApiException):  # already gone is fine
            jobs.core.delete_namespaced_pod(pod.metadata.name, jobs.ns, grace_period_seconds=0)

    def gone() -> bool:
        names = [p.metadata.name for p in jobs.pods("shortlived")]
        claims = jobs.core.list_namespaced_persistent_volume_claim(jobs.ns).items
        services = jobs.core.list_namespaced_service(jobs.ns).items
        return (
            not names
            and not [c for c in claims if c.metadata.deletion_timestamp is None]
            and not services
        )

    wait_for(gone, "garbage collection of the job's children", timeout=60)


def test_reports_pushed_on_the_channel_reach_status_without_any_pod_write(
    jobs: Jobs, operator: OperatorProcess, tmp_path: Any
) -> None:
    jobs.create(llm_job("pushed", resources={"workers": 2, "gpuType": "a100"}))
    pods = jobs.live_pods("pushed", 2)
    env = _env(pods[0])
    url, ca = env["KUBETRAIN_REPORT_URL"], env["KUBETRAIN_REPORT_CA"]
    assert url == f"https://127.0.0.1:{operator.channel_port}/v1/reports"
    assert env["KUBETRAIN_REPORT_TOKEN_FILE"] == "/var/run/secrets/kubetrain.io/report/token"
    projected = next(v for v in pods[0].spec.volumes if v.name == "report-token").projected
    assert projected.sources[0].service_account_token.audience == "kubetrain.io/report"
    _run_all(jobs, "pushed", pods)
    jobs.phase("pushed", "Running")
    before = jobs.core.read_namespaced_pod("pushed-worker-0-a1", jobs.ns).metadata

    token = tmp_path / "token"
    token.write_text(kubelet.report_token(jobs.core, jobs.ns, "pushed-worker-0-a1"))
    kubelet.push(
        url, ca, token, epoch=1, totalEpochs=1, step=4, totalSteps=10, loss=0.75,
        checkpoints=[kubelet.checkpoint("step-4", 1, 4, 0.75)],
    )  # fmt: skip
    status = jobs.until(
        "pushed", lambda s: (s.get("progress") or {}).get("currentStep") == 4, "pushed progress"
    )
    assert status["latestCheckpoint"] == "step-4" and status["metrics"]["currentLoss"] == 0.75
    after = jobs.core.read_namespaced_pod("pushed-worker-0-a1", jobs.ns).metadata
    assert after.resource_version == before.resource_version  # no write to the Pod
    assert ANNOTATION not in (after.annotations or {})

    # Only a token the API server bound to a worker Pod, for the channel's audience, counts.
    with pytest.raises(ChannelError, match="answered 401"):
        kubelet.push(url, ca, _file(tmp_path, "none", "not-a-token"), step=5, totalSteps=10)
    api_token = kubelet.report_token(jobs.core, jobs.ns, "pushed-worker-0-a1", audience="")
    with pytest.raises(ChannelError, match="answered 401"):
        kubelet.push(url, ca, _file(tmp_path, "api", api_token), step=5, totalSteps=10)
    jobs.core.create_namespaced_pod(
        jobs.ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="bystander"),
            spec=client.V1PodSpec(
                service_account_name="kubetrain-trainer",
                containers=[client.V1Container(name="x", image="x")],
            ),
        ),
    )
    bystander = kubelet.report_token(jobs.core, jobs.ns, "bystander")
    with pytest.raises(ChannelError, match="answered 404"):
        kubelet.push(url, ca, _file(tmp_path, "bystander", bystander), step=5, totalSteps=10)
    assert jobs.status("pushed")["progress"]["currentStep"] == 4

    # A bad report on the channel is refused with its reason, and gets the same Warning as
    # on the annotation.
    with pytest.raises(ChannelError, match="answered 400 step 11 is past totalSteps 10"):
        kubelet.push(url, ca, token, step=11, totalSteps=10)
    event = jobs.event("InvalidProgressReport")[0]
    assert "step 11 is past totalSteps 10" in event.message

    # A final report is pushed and kept on the Pod too, for an operator that restarts.
    sink = ChannelSink(
        PushSink(Channel(url, ca, token, 1.0)),
        PodAnnotationSink(jobs.core, jobs.ns, "pushed-worker-0-a1"),
        fallback_interval=60,
    )
    sink.send(json.dumps({"version": 1, "time": kubelet._now(), "state": "completed",
                          "epoch": 1, "totalEpochs": 1, "step": 10, "totalSteps": 10}))  # fmt: skip
    assert (sink.pushed, sink.annotated) == (1, 1)
    for pod in pods:
        kubelet.finish(jobs.core, jobs.ns, pod.metadata.name, 0)
    status = jobs.phase("pushed", "Completed")
    assert status["progress"]["percentage"] == 100.0


def test_trainers_fall_back_to_their_pod_when_the_channel_is_down(
    jobs: Jobs, operator: OperatorProcess, tmp_path: Any
) -> None:
    jobs.create(llm_job("fallback"))
    pod = jobs.live_pods("fallback", 1)[0]
    env = _env(pod)
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    jobs.phase("fallback", "Running")
    token = _file(tmp_path, "token", kubelet.report_token(jobs.core, jobs.ns, pod.metadata.name))
    dead = f"https://127.0.0.1:{free_ports(1)[0]}/v1/reports"  # nothing listens there
    sink = ChannelSink(
        PushSink(Channel(dead, env["KUBETRAIN_REPORT_CA"], token, 1.0)),
        PodAnnotationSink(jobs.core, jobs.ns, pod.metadata.name),
        fallback_interval=0,
    )
    sink.send(json.dumps({"version": 1, "time": kubelet._now(), "epoch": 1, "totalEpochs": 1,
                          "step": 3, "totalSteps": 10}))  # fmt: skip
    assert (sink.pushed, sink.annotated) == (0, 1)
    jobs.until(
        "fallback",
        lambda s: (s.get("progress") or {}).get("currentStep") == 3,
        "annotated progress",
    )


def _file(directory: Any, name: str, text: str) -> Any:
    path = directory / name
    path.write_text(text)
    return path


def _fetcher(jobs: Jobs, name: str, attempt: int = 1) -> client.V1Pod:
    pod: client.V1Pod = wait_for(
        lambda: _get(lambda: jobs.core.read_namespaced_pod(f"{name}-fetch-{attempt}", jobs.ns)),
        f"the fetch Pod of {name}",
        operator=jobs.operator,
    )
    return pod


def _workers(jobs: Jobs, name: str, count: int) -> list[client.V1Pod]:
    def probe() -> list[client.V1Pod] | None:
        pods = [
            p for p in jobs.pods(name)
            if "kubetrain.io/stage" not in (p.metadata.labels or {})
            and p.metadata.deletion_timestamp is None
        ]  # fmt: skip
        return pods if len(pods) == count else None

    found: list[client.V1Pod] = wait_for(probe, f"{count} workers of {name}", 30, jobs.operator)
    return found


def test_remote_sources_are_fetched_once_before_the_first_attempt(jobs: Jobs) -> None:
    jobs.create(
        llm_job(
            "remote",
            dataset={"uri": "s3://corpus/train.jsonl", "credentials": {"secretName": "s3-keys"}},
            llm={"baseModel": "meta-llama/Llama-2-7b-hf", "credentials": {"secretName": "hub"}},
        )
    )
    fetcher = _fetcher(jobs, "remote")
    spec = fetcher.spec
    container = spec.containers[0]
    assert container.command == ["python", "-m", "kubetrain.trainer.fetch"]
    assert "nvidia.com/gpu" not in (container.resources.limits or {})  # no GPU held to download
    plan = json.loads(_env(fetcher)["KUBETRAIN_FETCH"])
    assert plan["cacheDir"] == "/checkpoints/.cache"
    assert [(s["name"], s["uri"], s.get("credentialsSecret")) for s in plan["sources"]] == [
        ("dataset", "s3://corpus/train.jsonl", "s3-keys"),
        ("baseModel", "meta-llama/Llama-2-7b-hf", "hub"),
    ]
    secrets = {v.name: v.secret.secret_name for v in spec.volumes if v.secret}
    assert secrets == {"credentials-dataset": "s3-keys", "credentials-basemodel": "hub"}
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["credentials-dataset"] == "/var/run/secrets/kubetrain.io/sources/dataset"
    assert not [p for p in jobs.pods("remote") if p.metadata.name != "remote-fetch-1"]
    status = jobs.phase("remote", "Initializing")
    assert condition(status, "Initializing")["status"] == "True"

    kubelet.start(jobs.core, jobs.ns, "remote-fetch-1")
    kubelet.report(
        jobs.core, jobs.ns, "remote-fetch-1",
        fetch={"source": "baseModel", "bytesDone": 256 << 20, "bytesTotal": 1 << 30,
               "bytesPerSecond": 64 << 20, "filesDone": 1, "filesTotal": 4},
    )  # fmt: skip
    status = jobs.until(
        "remote", lambda s: (s.get("initialization") or {}).get("bytesDone"), "fetch progress"
    )
    init = status["initialization"]
    assert init["percentage"] == 25.0 and init["remainingSeconds"] == 12.0
    assert init["source"] == "baseModel" and init["state"] == "Fetching"

    fetched = [
        {"name": "dataset", "uri": "s3://corpus/train.jsonl", "revision": "e1",
         "path": "/checkpoints/.cache/datasets/train-e1/train.jsonl", "sizeBytes": 2048,
         "files": 1},
        {"name": "baseModel", "uri": "meta-llama/Llama-2-7b-hf", "revision": "c0ffee",
         "path": "/checkpoints/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/"
                 "snapshots/c0ffee", "sizeBytes": 1 << 30, "files": 4},
    ]  # fmt: skip
    kubelet.report(jobs.core, jobs.ns, "remote-fetch-1", state="completed", fetched=fetched)
    kubelet.finish(jobs.core, jobs.ns, "remote-fetch-1", 0)
    worker = _workers(jobs, "remote", 1)[0]
    env = _env(worker)
    assert env["KUBETRAIN_DATASET_PATH"] == fetched[0]["path"]
    assert env["KUBETRAIN_BASE_MODEL_PATH"] == fetched[1]["path"]
    assert env["HF_HUB_OFFLINE"] == "1" and "KUBETRAIN_DATASET_URI" not in env
    status = jobs.until(
        "remote", lambda s: (s.get("initialization") or {}).get("state") == "Complete", "fetched"
    )
    assert [s["revision"] for s in status["initialization"]["sources"]] == ["e1", "c0ffee"]
    assert "dataset 2.0 KiB" in jobs.event("Fetched")[0].message

    # Every later attempt reads the same copy: a stop and a resume fetch nothing.
    kubelet.start(jobs.core, jobs.ns, worker.metadata.name)
    jobs.phase("remote", "Running")
    _stop(jobs, "remote")
    jobs.patch("remote", {"suspend": False})
    resumed = wait_for(
        lambda: _get(lambda: jobs.core.read_namespaced_pod("remote-worker-0-a2", jobs.ns)),
        "the second attempt's worker",
    )
    assert _env(resumed)["KUBETRAIN_DATASET_PATH"] == fetched[0]["path"]
    assert [p.metadata.name for p in jobs.pods("remote") if "fetch" in p.metadata.name] == [
        "remote-fetch-1"
    ]


def test_a_missing_source_fails_the_job_at_once_with_its_reason(jobs: Jobs) -> None:
    jobs.create(llm_job("absent", dataset={"uri": "s3://corpus/missing.jsonl"}))
    _fetcher(jobs, "absent")
    kubelet.start(jobs.core, jobs.ns, "absent-fetch-1")
    kubelet.finish(
        jobs.core, jobs.ns, "absent-fetch-1", EXIT_PERMANENT,
        "DatasetNotFound: s3://corpus/missing.jsonl does not exist",
    )  # fmt: skip
    status = jobs.phase("absent", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "DatasetNotFound"
    assert failed["message"] == "s3://corpus/missing.jsonl does not exist"
    assert status.get("failures", 0) == 0 and status["initialization"]["state"] == "Failed"
    assert [p.metadata.name for p in jobs.pods("absent")] == ["absent-fetch-1"]  # no retry


def test_a_missing_dataset_claim_fails_the_job_with_dataset_not_found(jobs: Jobs) -> None:
    jobs.create(llm_job("unmounted", dataset={"pvc": {"claimName": "nowhere"}}))
    status = jobs.phase("unmounted", "Failed", timeout=40)
    failed = condition(status, "Failed")
    assert failed["reason"] == "DatasetNotFound"
    assert (
        "spec.dataset.pvc.claimName: there is no PersistentVolumeClaim 'nowhere'"
        in (failed["message"])
    )
    assert not jobs.pods("unmounted")


def test_a_permanent_trainer_failure_does_not_use_the_backoff_limit(jobs: Jobs) -> None:
    jobs.create(llm_job("misfit", runPolicy={"backoffLimit": 3}))
    pod = jobs.live_pods("misfit", 1)[0]
    kubelet.start(jobs.core, jobs.ns, pod.metadata.name)
    kubelet.finish(
        jobs.core, jobs.ns, pod.metadata.name, EXIT_PERMANENT,
        "ConfigurationError: dataset /data has 3 usable samples; at least 5 are required",
    )  # fmt: skip
    status = jobs.phase("misfit", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "ConfigurationError" and status.get("failures", 0) == 0
    assert "3 usable samples" in failed["message"]
    event = jobs.event("ConfigurationError")[0]
    assert event.type == "Warning"
