"""Helpers for the SDK and plugin tests: jobs made through the SDK, a trainer played by the test.

The operator runs for real (the ``operator`` fixture); no kubelet runs the worker Pods, so
the test moves them along with ``kubelet.py`` as a kubelet and a trainer would.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetrain.api import TrainingJob
from kubetrain.localcluster import ControlPlane
from kubetrain.sdk import Client
from tests.integration import kubelet
from tests.integration.test_operator import bound_claim
from tests.polling import eventually

BASE_MODEL = "random://llama-tiny"  # built in code: nothing to fetch
CHECKPOINT = {"storageClassName": "manual", "size": "1Gi"}
"""Checkpoint claims bind to a static PV the test makes (no provisioner runs here)."""


def sdk_client(cluster: ControlPlane, namespace: str) -> Client:
    return Client(kubeconfig=cluster.kubeconfig, namespace=namespace)


def create_llm(
    sdk: Client, core: client.CoreV1Api, name: str, *, storage: bool = True, **overrides: Any
) -> TrainingJob:
    """An LLM LoRA job on an A100 through ``Client.create``, with its checkpoint PV ready."""
    if storage:
        bound_claim(core, sdk.namespace, f"{name}-checkpoints", create_claim=False)
    arguments: dict[str, Any] = {
        "model_type": "llm",
        "dataset": {"synthetic": {"samples": 64}},
        "llm": {"baseModel": BASE_MODEL, "lora": {"rank": 8, "alpha": 16}},
        "training": {"epochs": 2, "batchSize": 4, "learningRate": 2e-4},
        "gpu_type": "a100",
        "checkpoint": CHECKPOINT,
    }
    arguments.update(overrides)
    return sdk.create(name, **arguments)


def live_pod(
    core: client.CoreV1Api, namespace: str, job: str, attempt: int | None = None
) -> client.V1Pod:
    """Worker 0 of ``job`` once the operator created it (of ``attempt``, if given)."""

    def probe() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"kubetrain.io/job-name={job}"
        ).items
        for pod in pods:
            labels = pod.metadata.labels or {}
            if pod.metadata.deletion_timestamp is None and (
                attempt is None or labels.get("kubetrain.io/attempt") == str(attempt)
            ):
                return pod
        return None

    found: client.V1Pod = eventually(probe, timeout=30, what=f"a worker Pod of {job}")
    return found


def start_worker(core: client.CoreV1Api, namespace: str, job: str) -> str:
    """Wait for worker 0 and mark it running; its Pod's name."""
    pod = live_pod(core, namespace, job)
    kubelet.start(core, namespace, pod.metadata.name)
    return str(pod.metadata.name)


def progress(
    core: client.CoreV1Api, namespace: str, pod: str, step: int, total: int = 100, **more: Any
) -> None:
    """A trainer's report: ``step`` of ``total`` over two epochs, the loss falling."""
    kubelet.report(
        core,
        namespace,
        pod,
        epoch=1 if step <= total // 2 else 2,
        totalEpochs=2,
        step=step,
        totalSteps=total,
        loss=round(2.0 - step / total, 4),
        **more,
    )


def complete(core: client.CoreV1Api, namespace: str, pod: str, total: int = 100) -> None:
    """The trainer's last report, then the container exits 0."""
    progress(
        core,
        namespace,
        pod,
        total,
        total,
        state="completed",
        model={"path": "/checkpoints/output/adapter", "format": "peft-adapter"},
    )
    kubelet.finish(core, namespace, pod, 0)


def finish_stopping(core: client.CoreV1Api, namespace: str, job: str) -> None:
    """Once the operator deleted the job's Pods, end them as a kubelet would (checkpointed)."""

    def deleting() -> list[str] | None:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"kubetrain.io/job-name={job}"
        ).items
        names = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is not None]
        return names or None

    for name in eventually(deleting, timeout=30, what=f"the Pods of {job} being deleted"):
        kubelet.terminate(core, namespace, name)


def pod_env(pod: client.V1Pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}


def plugin() -> Path:
    """The installed ``kubectl-train`` console script, next to this interpreter."""
    return Path(sys.executable).parent / "kubectl-train"


def worker_pod_on_agent(
    core: client.CoreV1Api, namespace: str, job: str, node: str, script: str, *args: str
) -> str:
    """A Pod labelled as worker 0 of ``job``, run for real by the node agent's ``node``.

    No TrainingJob is needed: reading logs only looks the worker Pod up by its labels.
    """
    eventually(
        lambda: [
            a
            for a in core.list_namespaced_service_account(namespace).items
            if a.metadata.name == "default"
        ],
        what="the default ServiceAccount",
    )
    name = f"{job}-worker-0-a1"
    labels = {
        "kubetrain.io/job-name": job,
        "kubetrain.io/worker-index": "0",
        "kubetrain.io/attempt": "1",
    }
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 20,
                "containers": [
                    {
                        "name": "trainer",
                        "image": "example.invalid/unused:1",
                        "command": [sys.executable, "-u", "-c", script, *args],
                    }
                ],
            },
        },
    )
    return name
