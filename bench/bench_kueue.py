"""kubetrain under Kueue against a batch/v1 Job under Kueue, in the same run.

On the local control plane with the node agent and the real Kueue binary: a ClusterQueue
of 4 A100 GPUs, a low-priority 4-GPU job running, then a high-priority 4-GPU job that
preempts it. For each kind (a TrainingJob with the tiny LoRA trainer, and a batch/v1 Job
whose container exits on SIGTERM) it prints, over the rounds:

- eviction -> checkpoint committed (TrainingJobs only: the Job has none);
- eviction -> quota released (the Workload's QuotaReserved=False) and -> GPUs free (the
  evicted workers gone from the node);
- the preemptor's admission -> all its workers Running;

and the operator's API writes per TrainingJob (Workload writes included).

    .venv/bin/python bench/bench_kueue.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import operator_argv, operator_metrics  # noqa: E402

from kubetrain.api.base import GROUP, PLURAL, VERSION  # noqa: E402
from kubetrain.api.children import LABEL_JOB  # noqa: E402
from kubetrain.localcluster import ControlPlane  # noqa: E402
from kubetrain.localcluster.demo import install  # noqa: E402
from kubetrain.localcluster.kueue import Kueue, priority_classes  # noqa: E402
from kubetrain.localcluster.nodeagent import NodeAgent  # noqa: E402
from kubetrain.localcluster.ports import free_ports  # noqa: E402

NS = "bench-kueue"
KUEUE = ("kueue.x-k8s.io", "v1beta2")
POLL = 0.05


def queues() -> list[dict[str, Any]]:
    quotas = (("cpu", "64"), ("memory", "512Gi"), ("nvidia.com/gpu", "4"))
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": "a100"},
            "spec": {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": "bench"},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": [n for n, _ in quotas],
                        "flavors": [
                            {
                                "name": "a100",
                                "resources": [{"name": n, "nominalQuota": q} for n, q in quotas],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "gpus", "namespace": NS},
            "spec": {"clusterQueue": "bench"},
        },
        *priority_classes(),
    ]


def training_job(name: str, priority: str, samples: int) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "kueue-tiny-lora.yaml").read_text()
    )
    manifest["metadata"]["name"] = name
    manifest["spec"]["priority"] = priority
    manifest["spec"]["dataset"]["synthetic"]["samples"] = samples
    manifest["spec"]["training"]["epochs"] = 3
    manifest["spec"]["checkpoint"]["intervalSteps"] = 100000  # only the stop checkpoints
    return manifest


def batch_job(name: str, priority: str) -> dict[str, Any]:
    """A 4-GPU batch/v1 Job under Kueue; its container exits at once on SIGTERM."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "while True: time.sleep(1)\n"
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": {
                "kueue.x-k8s.io/queue-name": "gpus",
                "kueue.x-k8s.io/priority-class": priority,
            },
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "work",
                            "image": "python",
                            "command": ["python", "-c", code],
                            "resources": {
                                "requests": {"cpu": "1", "memory": "256Mi"},
                                "limits": {"nvidia.com/gpu": "4"},
                            },
                        }
                    ],
                }
            },
        },
    }


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)

    def workload(self, owner: str) -> dict[str, Any] | None:
        for wl in self.custom.list_namespaced_custom_object(*KUEUE, NS, "workloads")["items"]:
            if any(r.get("name") == owner for r in wl["metadata"].get("ownerReferences") or []):
                return dict(wl)
        return None

    def condition(self, owner: str, kind: str) -> str:
        wl = self.workload(owner) or {}
        found = [c for c in (wl.get("status") or {}).get("conditions") or [] if c["type"] == kind]
        return str(found[0]["status"]) if found else ""

    def pods(self, selector: str) -> list[client.V1Pod]:
        items: list[client.V1Pod] = self.core.list_namespaced_pod(NS, label_selector=selector).items
        return items

    def job_status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        return dict(body.get("status") or {})


def until(check: Callable[[], bool], what: str, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(POLL)
    return time.monotonic()


def all_running(pods: list[client.V1Pod], n: int) -> bool:
    return len(pods) == n and all(p.status.phase == "Running" for p in pods)


def preempt(
    cluster: Cluster,
    *,
    low: str,
    high: str,
    selector: Callable[[str], str],
    create_high: Callable[[], None],
    checkpoints: Callable[[], int] | None,
) -> dict[str, float]:
    """Create the preemptor and time what follows, each from the eviction."""
    before = checkpoints() if checkpoints else 0
    create_high()
    evicted = until(lambda: cluster.condition(low, "Evicted") == "True", "eviction")
    marks: dict[str, float] = {}
    pending = {"released", "gone", "admitted", "running"} | (
        {"checkpoint"} if checkpoints else set()
    )
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        if "checkpoint" in pending and checkpoints and checkpoints() > before:
            marks["checkpoint"] = now - evicted
            pending.discard("checkpoint")
        if "released" in pending and cluster.condition(low, "QuotaReserved") != "True":
            marks["released"] = now - evicted
            pending.discard("released")
        if "gone" in pending and not [
            p for p in cluster.pods(selector(low)) if p.status.phase in ("Pending", "Running")
        ]:
            marks["gone"] = now - evicted
            pending.discard("gone")
        if "admitted" in pending and cluster.condition(high, "Admitted") == "True":
            marks["admitted_at"] = now
            pending.discard("admitted")
        if (
            "running" in pending
            and "admitted_at" in marks
            and all_running(cluster.pods(selector(high)), 1)
        ):
            marks["running"] = now - marks["admitted_at"]
            pending.discard("running")
        time.sleep(POLL)
    if pending:
        raise TimeoutError(f"still waiting for {sorted(pending)}")
    marks.pop("admitted_at")
    return marks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"TrainingJob": [], "batch/v1 Job": []}
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "cluster") as plane:
        agent = NodeAgent(plane.kubeconfig, Path(tmp) / "agent")
        agent.start()
        kueue = Kueue(plane)
        operator: subprocess.Popen[bytes] | None = None
        try:
            kueue.start()
            install(plane.kubeconfig)
            api = config.new_client_from_config(config_file=str(plane.kubeconfig))
            cluster = Cluster(api)
            cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
            kueue.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(queues()))
            (metrics_port,) = free_ports(1)
            env = {
                "KUBETRAIN_KUEUE_ENABLED": "true",
                "KUBETRAIN_KUEUE_VISIBILITY_URL": kueue.visibility_url,
            }
            operator = subprocess.Popen(
                operator_argv(plane.kubeconfig, metrics_port, "--report-interval-seconds", "2"),
                stdout=(Path(tmp) / "operator.log").open("wb"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **env},
            )
            until(lambda: _up(metrics_port), "operator metrics", 60)
            start_writes = operator_metrics(metrics_port)
            jobs, custom = 0, cluster.custom
            for r in range(args.rounds):
                low, high = f"low-{r}", f"high-{r}"
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NS, PLURAL, training_job(low, "low", 4096)
                )
                until(
                    lambda low=low: (
                        (cluster.job_status(low).get("progress") or {}).get("currentStep", 0) >= 2
                    ),
                    "the low job training",
                )
                results["TrainingJob"].append(
                    preempt(
                        cluster,
                        low=low,
                        high=high,
                        selector=lambda j: f"{LABEL_JOB}={j}",
                        create_high=lambda high=high: custom.create_namespaced_custom_object(
                            GROUP, VERSION, NS, PLURAL, training_job(high, "high", 64)
                        ),
                        checkpoints=lambda low=low: len(
                            cluster.job_status(low).get("checkpoints") or []
                        ),
                    )
                )
                until(
                    lambda high=high: cluster.job_status(high).get("phase") == "Completed",
                    "high done",
                )
                jobs += 2
                for name in (low, high):
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
                until(lambda: not cluster.pods(LABEL_JOB), "TrainingJob pods gone")
            writes = {
                k: v - start_writes.get(k, 0.0) for k, v in operator_metrics(metrics_port).items()
            }
            for r in range(args.rounds):
                low, high = f"batch-low-{r}", f"batch-high-{r}"
                cluster.batch.create_namespaced_job(NS, batch_job(low, "kubetrain-low"))
                until(
                    lambda low=low: all_running(cluster.pods(f"job-name={low}"), 1),
                    "the low Job running",
                )
                results["batch/v1 Job"].append(
                    preempt(
                        cluster,
                        low=low,
                        high=high,
                        selector=lambda j: f"job-name={j}",
                        create_high=lambda high=high: cluster.batch.create_namespaced_job(
                            NS, batch_job(high, "kubetrain-high")
                        ),
                        checkpoints=None,
                    )
                )
                for name in (low, high):
                    cluster.batch.delete_namespaced_job(name, NS, propagation_policy="Foreground")
                until(
                    lambda: (
                        not [
                            p
                            for p in cluster.pods("job-name")
                            if p.status.phase in ("Pending", "Running")
                        ]
                    ),
                    "Job pods gone",
                )
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(30)
            kueue.stop()
            agent.stop(stop_pods=True)

    print(
        f"Kueue preemption on the local cluster, {args.rounds} round(s) per kind "
        "(4-GPU ClusterQueue; a high-priority 4-GPU job preempts a running low one); "
        "median (max) seconds"
    )
    labels = (
        ("checkpoint", "eviction -> checkpoint committed"),
        ("released", "eviction -> quota released"),
        ("gone", "eviction -> GPUs free (workers gone)"),
        ("running", "admission -> all workers Running"),
    )
    print(f"  {'':40s} {'TrainingJob':>18s} {'batch/v1 Job':>18s}")
    for key, label in labels:
        cells = []
        for kind in ("TrainingJob", "batch/v1 Job"):
            values = [m[key] for m in results[kind] if key in m]
            cells.append(
                f"{statistics.median(values):7.2f} ({max(values):6.2f})"
                if values
                else f"{'n/a':>18s}"
            )
        print(f"  {label:40s} {cells[0]:>18s} {cells[1]:>18s}")
    total = sum(
        v for k, v in writes.items() if k not in ("get", "status", "token_reviews", "pushed")
    )
    verbs = ", ".join(
        f"{k} {v / jobs:.1f}"
        for k, v in sorted(writes.items())
        if k not in ("get", "status", "token_reviews", "pushed") and v
    )
    print(
        f"  operator API writes per TrainingJob (preempted or preemptor, Workload included): "
        f"{total / jobs:.1f} ({verbs}); status writes {writes.get('status', 0.0) / jobs:.1f}"
    )
    return 0


def _up(port: int) -> bool:
    try:
        operator_metrics(port)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
