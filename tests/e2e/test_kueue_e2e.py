"""kubetrain under Kueue: the real Kueue binary on the local control plane, the real
operator with its Kueue integration on, real trainers on the node agent.

Kueue runs only for this module (its fixture starts it and removes its webhooks after);
the jobs live in kueue-e2e-* namespaces, which only this module's operator serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.children import LABEL_JOB
from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.kueue import Kueue, priority_classes
from kubetrain.localcluster.nodeagent import NodeAgent
from kubetrain.localcluster.ports import free_ports
from tests.conftest import _fresh_namespace
from tests.e2e.conftest import E2EOperator
from tests.e2e.test_training_e2e import Job, tiny_lora
from tests.integration.operator_fixtures import OperatorProcess, operator_identity, wait_for

KUEUE = ("kueue.x-k8s.io", "v1beta2")
A100 = "NVIDIA-A100-SXM4-80GB"
TIMEOUT = 300.0


class KueueOperator(E2EOperator):
    """The operator with its Kueue integration on, serving only kueue-e2e-* namespaces."""

    metrics_port = free_ports(1)[0]

    def __init__(self, *args: Any, visibility_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.visibility_url = visibility_url

    def start(self) -> None:
        os.environ["KUBETRAIN_KUEUE_ENABLED"] = "true"
        os.environ["KUBETRAIN_KUEUE_VISIBILITY_URL"] = self.visibility_url
        try:
            super().start()
        finally:
            del os.environ["KUBETRAIN_KUEUE_ENABLED"]
            del os.environ["KUBETRAIN_KUEUE_VISIBILITY_URL"]

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--namespace") + 1] = "kueue-e2e-*"
        return argv


@pytest.fixture(scope="module")
def kueue(cluster: ControlPlane, node_agent: NodeAgent) -> Iterator[Kueue]:
    """Kueue with the A100 and H100 flavors (the catalogue's node labels) and kubetrain's
    three WorkloadPriorityClasses."""
    running = Kueue(cluster)
    running.start()
    objects: list[dict[str, Any]] = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
         "metadata": {"name": name}, "spec": {"nodeLabels": {"nvidia.com/gpu.product": product}}}
        for name, product in (("a100", A100), ("h100", "NVIDIA-H100-80GB-HBM3"))
    ] + priority_classes()  # fmt: skip
    running.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def kueue_operator(
    cluster: ControlPlane,
    core: client.CoreV1Api,
    crds: None,
    priority_classes: None,
    kueue: Kueue,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    tmp = tmp_path_factory.mktemp("kueue-operator")
    process = KueueOperator(
        operator_identity(cluster, core, tmp),
        Path("unused"),
        tmp / "operator.log",
        visibility_url=kueue.visibility_url,
    )
    process.start()
    yield process
    process.stop()


class Queues:
    """One test's ClusterQueue (A100 GPUs, preemption by priority) and its LocalQueue."""

    def __init__(self, api: client.ApiClient, kueue: Kueue, namespace: str) -> None:
        self.custom, self.kueue, self.ns = client.CustomObjectsApi(api), kueue, namespace
        self.cluster_queue, self.local_queue = f"cq-{namespace}"[:63], "gpus"

    def create(self, gpus: int) -> None:
        cq = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": self.cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [self._group(gpus)],
            },
        }
        self.custom.create_cluster_custom_object(*KUEUE, "clusterqueues", cq)
        lq = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": self.local_queue, "namespace": self.ns},
            "spec": {"clusterQueue": self.cluster_queue},
        }
        self.custom.create_namespaced_custom_object(*KUEUE, self.ns, "localqueues", lq)

    def set_gpus(self, gpus: int) -> None:
        self.custom.patch_cluster_custom_object(
            *KUEUE, "clusterqueues", self.cluster_queue,
            {"spec": {"resourceGroups": [self._group(gpus)]}},
        )  # fmt: skip

    @staticmethod
    def _group(gpus: int) -> dict[str, Any]:
        quotas = (("cpu", "64"), ("memory", "512Gi"), ("nvidia.com/gpu", str(gpus)))
        return {
            "coveredResources": [name for name, _ in quotas],
            "flavors": [
                {"name": "a100",
                 "resources": [{"name": n, "nominalQuota": q} for n, q in quotas]}
            ],
        }  # fmt: skip

    def delete(self) -> None:
        try:
            self.custom.delete_cluster_custom_object(*KUEUE, "clusterqueues", self.cluster_queue)
        except ApiException as err:
            if err.status != 404:
                raise

    def workload(self, job: str) -> dict[str, Any]:
        """The job's Workload; {} while there is none."""
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                *KUEUE, self.ns, "workloads", f"trainingjob-{job}"
            )
        except ApiException as err:
            if err.status == 404:
                return {}
            raise
        return found

    def condition(self, job: str, kind: str) -> dict[str, Any]:
        return _condition(self.workload(job).get("status") or {}, kind)

    def pods_ready(self, job: str, status: str, reason: str, operator: OperatorProcess) -> None:
        """Wait for the job's Workload's PodsReady condition (written after the job's phase):
        Kueue's waitForPodsReady evicts an admitted Workload that does not get it."""

        def written() -> bool:
            found = self.condition(job, "PodsReady")
            return (found.get("status"), found.get("reason")) == (status, reason)

        what = f"{job}'s Workload PodsReady={status} ({reason})"
        wait_for(written, what, TIMEOUT, operator)


@pytest.fixture
def queues(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    kueue: Kueue,
    request: pytest.FixtureRequest,
) -> Iterator[Queues]:
    namespace = _fresh_namespace(core, request, "kueue-e2e-")
    made = Queues(api_client, kueue, namespace)
    try:
        yield made
    finally:
        core.delete_namespace(namespace)
        made.delete()


def gpu_job(name: str, queue: str, *, gpus: int = 1, workers: int = 1, epochs: int = 2,
            samples: int = 512, priority: str = "normal") -> dict[str, Any]:  # fmt: skip
    """The tiny LoRA job on A100s, queued in ``queue``. One GPU per worker by default: a
    quota counts GPUs alike at any size, and each GPU is a training process on this machine's
    two cores: three 4-GPU jobs (twelve processes) lost ranks under a loaded CI run."""
    manifest = tiny_lora(name)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue}
    spec = manifest["spec"]
    spec["priority"] = priority
    spec["dataset"]["synthetic"]["samples"] = samples
    spec["training"]["epochs"] = epochs
    spec["checkpoint"]["intervalSteps"] = 1000  # only the stops checkpoint
    spec["resources"] = {"gpuType": "a100", "gpusPerWorker": gpus, "workers": workers,
                         "cpu": "1", "memory": "2Gi"}  # fmt: skip
    return manifest


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def _step(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("currentStep") or 0)


def _pods(job: Job) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = job.core.list_namespaced_pod(
        job.ns, label_selector=f"{LABEL_JOB}={job.name}"
    ).items
    return [p for p in pods if (p.metadata.labels or {}).get("kubetrain.io/stage") != "fetch"]


def _jobs(
    api: client.ApiClient, queues: Queues, operator: OperatorProcess, *names: str
) -> list[Job]:
    return [Job(api, queues.ns, name, operator) for name in names]


def test_a_gpu_quota_admits_two_jobs_and_queues_the_third_with_kueues_reason(
    api_client: client.ApiClient, queues: Queues, kueue_operator: OperatorProcess
) -> None:
    queues.create(gpus=2)
    first, second, third = _jobs(api_client, queues, kueue_operator, "one", "two", "three")
    for job in (first, second):
        job.create(gpu_job(job.name, queues.local_queue, epochs=3))
    for job in (first, second):
        job.until(lambda s: s.get("phase") == "Running", "Running")
    third.create(gpu_job(third.name, queues.local_queue, epochs=1, samples=128))

    def queued(status: dict[str, Any]) -> bool:
        queue = status.get("queue") or {}
        return status.get("phase") == "Queued" and "nvidia.com/gpu" in (queue.get("message") or "")

    waiting = third.until(queued, "Queued with Kueue's reason")
    queue = waiting["queue"]
    assert queue["clusterQueue"] == queues.cluster_queue and not queue["admitted"]
    assert queue["workload"] == "trainingjob-three"
    assert "nvidia.com/gpu" in _condition(waiting, "Queued")["message"]
    assert queues.cluster_queue in _condition(waiting, "Queued")["message"]
    assert not _pods(third), "no worker of a queued job exists"
    positioned = third.until(lambda s: (s.get("queue") or {}).get("position") == 0,
                             "its place in the queue, from Kueue's visibility API")  # fmt: skip
    assert positioned["phase"] == "Queued"
    # Both admitted jobs hold the quota while they run; the first to finish frees it.
    for job in (first, second):
        running = job.status()
        assert running["queue"]["admitted"] and running["queue"]["flavors"] == {
            "nvidia.com/gpu": "a100",
            "cpu": "a100",
            "memory": "a100",
        }
    third.until(lambda s: s.get("phase") in ("Pending", "Running", "Completed"),
                "admitted once a job completed")  # fmt: skip
    finished = [j for j in (first, second) if j.status().get("phase") == "Completed"]
    assert finished, "the third was admitted only after a running job completed"
    done = third.until(lambda s: s.get("phase") == "Completed", "Completed")
    assert done["queue"]["admitted"] is False and done["failures"] == 0
    wait_for(
        lambda: queues.condition("three", "Finished").get("status") == "True",
        "its Workload Finished (the quota back at once)", TIMEOUT, kueue_operator,
    )  # fmt: skip


def test_two_workers_start_together_or_not_at_all(
    api_client: client.ApiClient, queues: Queues, kueue_operator: OperatorProcess
) -> None:
    queues.create(gpus=1)  # fits one of the two 1-GPU workers
    (job,) = _jobs(api_client, queues, kueue_operator, "pair")
    job.create(gpu_job(job.name, queues.local_queue, workers=2, samples=256, epochs=1))

    def kueue_said_no() -> dict[str, Any] | None:
        reserved = queues.condition("pair", "QuotaReserved")
        return reserved if reserved.get("status") == "False" and reserved.get("message") else None

    refused = wait_for(kueue_said_no, "Kueue's verdict on the pair", TIMEOUT, kueue_operator)
    assert "nvidia.com/gpu" in refused["message"]
    waiting = job.until(lambda s: (s.get("queue") or {}).get("message") == refused["message"],
                        "Kueue's word on the job")  # fmt: skip
    assert waiting["phase"] == "Queued"
    assert not _pods(job), "neither worker exists while the group is not admitted"

    queues.set_gpus(2)
    job.until(lambda s: s.get("phase") == "Running", "Running once the quota fits both")
    queues.pods_ready("pair", "True", "Started", kueue_operator)
    admitted = queues.condition("pair", "Admitted")
    pods = _pods(job)
    names = sorted(p.metadata.name for p in pods)
    assert names == ["pair-worker-0-a1", "pair-worker-1-a1"], job.story()
    at = datetime.fromisoformat(admitted["lastTransitionTime"].replace("Z", "+00:00"))
    assert all(p.metadata.creation_timestamp >= at for p in pods), "no worker before admission"
    for pod in pods:  # the flavor's node labels, as Kueue's job framework adds them
        assert pod.spec.node_selector["nvidia.com/gpu.product"] == A100
    job.until(lambda s: s.get("phase") == "Completed", "Completed")


def test_a_high_priority_job_preempts_a_low_one_which_resumes_from_its_checkpoint(
    api_client: client.ApiClient, queues: Queues, kueue_operator: OperatorProcess
) -> None:
    queues.create(gpus=1)
    low, high = _jobs(api_client, queues, kueue_operator, "low", "high")
    low.create(gpu_job(low.name, queues.local_queue, priority="low", samples=512, epochs=3))
    low.until(lambda s: s.get("phase") == "Running" and _step(s) >= 4, "training")
    high.create(gpu_job(high.name, queues.local_queue, priority="high", samples=64, epochs=1))

    def requeued(status: dict[str, Any]) -> bool:
        queued = _condition(status, "Queued")  # the reason stays until admitted again
        return status.get("phase") == "Queued" and queued.get("reason") == "Preempted"

    preempted = low.until(requeued, "Preempted and back in the queue")
    message = _condition(preempted, "Queued")["message"]
    assert f"for TrainingJob {queues.ns}/high" in message, message
    assert preempted["restarts"] == 1 and preempted["failures"] == 0
    assert preempted["queue"]["preemptions"] == 1
    at_preemption = next(
        c for c in preempted["checkpoints"] if c["id"] == preempted["latestCheckpoint"]
    )
    stopped_at = max(_step(s) for s in low.seen if s.get("attempt") == 1)
    assert at_preemption["step"] >= stopped_at, "the checkpoint is the step where it stopped"

    # The quota went back only after the checkpoint was written (the high job holds it now).
    # The operator writes the job's phase, then releases the Workload: wait for the second.
    def quota_released() -> dict[str, Any] | None:
        found = queues.condition("low", "QuotaReserved")
        return found if found.get("status") == "False" else None

    released = wait_for(quota_released, "low's Workload released", TIMEOUT, kueue_operator)
    queues.pods_ready("low", "False", "WaitForStart", kueue_operator)  # its next start is new
    written = datetime.fromisoformat(at_preemption["createdAt"].replace("Z", "+00:00"))
    given_back = datetime.fromisoformat(released["lastTransitionTime"].replace("Z", "+00:00"))
    assert given_back >= written.replace(microsecond=0), (given_back, written)
    stopping = [s for s in low.seen if s.get("phase") == "Stopping"]
    assert all(_condition(s, "Suspended").get("reason") == "Preempted" for s in stopping)

    high.until(lambda s: s.get("phase") == "Completed", "the high-priority job completes")
    resumed = low.until(lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", "resumed")
    assert resumed["resumedFrom"] == "latest"
    queues.pods_ready("low", "True", "Started", kueue_operator)
    done = low.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert done["failures"] == 0 and done["restarts"] == 1
    after = [_step(s) for s in low.seen if s.get("attempt") == 2 and _step(s)]
    assert min(after) >= at_preemption["step"], "training went on from the checkpoint"
    assert done["progress"]["currentStep"] == done["progress"]["totalSteps"]


def test_suspend_and_delete_release_the_quota(
    api_client: client.ApiClient, queues: Queues, kueue_operator: OperatorProcess
) -> None:
    queues.create(gpus=1)
    first, second, third = _jobs(api_client, queues, kueue_operator, "first", "second", "third")
    first.create(gpu_job(first.name, queues.local_queue, epochs=3))
    first.until(lambda s: s.get("phase") == "Running", "Running")
    second.create(gpu_job(second.name, queues.local_queue, epochs=3))
    second.until(lambda s: s.get("phase") == "Queued" and s.get("queue"), "Queued")

    first.patch({"suspend": True})
    stopped = first.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    assert stopped["queue"]["admitted"] is False
    second.until(lambda s: s.get("phase") == "Running", "admitted once the first is suspended")
    assert queues.workload("first") == {}, "a suspended job holds no Workload"

    third.create(gpu_job(third.name, queues.local_queue, samples=64, epochs=1))
    third.until(lambda s: s.get("phase") == "Queued" and s.get("queue"), "Queued")
    second.custom.delete_namespaced_custom_object(GROUP, VERSION, second.ns, PLURAL, second.name)
    third.until(
        lambda s: s.get("phase") in ("Running", "Completed"), "admitted once second is gone"
    )
