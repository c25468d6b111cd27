"""Operator benchmark on the real local control plane: N TrainingJobs applied at once.

Prints: creation -> all worker Pods created (p50/p99) against the floor (one client's
unavoidable writes), status-mirror latency from a report with a new checkpoint to the
job's status (p50/p99), API writes the reconciler sent per job lifecycle (create ->
Running -> Completed), and the operator's peak RSS. The scheduler binds the Pods to one
Node kept Ready by heartbeats; the kubelet is played by this script, which writes Pod
status as a kubelet would.

    .venv/bin/python bench/bench_operator.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import job, operator_argv, operator_metrics  # noqa: E402

from kubetrain.api.base import GROUP, PLURAL, VERSION  # noqa: E402
from kubetrain.api.report import ANNOTATION  # noqa: E402
from kubetrain.localcluster import ControlPlane, find_binary  # noqa: E402
from kubetrain.localcluster.ports import free_ports  # noqa: E402

NS = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scrape(port: int) -> dict[str, float]:
    return {k: v for k, v in operator_metrics(port).items() if k != "status"}


def status_writes(port: int) -> float:
    return operator_metrics(port).get("status", 0.0)


def unavoidable_writes(core: client.CoreV1Api, custom: client.CustomObjectsApi, n: int) -> float:
    """Seconds one client (16 threads, as the burst above) needs for the writes no operator
    can avoid for ``n`` jobs: the job, its Pod, one status write. The operator is stopped."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="floor")))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": ""},
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
    }

    def writes(i: int) -> None:
        name = f"job-{i:04d}"
        created = custom.create_namespaced_custom_object(GROUP, VERSION, "floor", PLURAL, job(name))
        core.create_namespaced_pod("floor", {**pod, "metadata": {"name": f"{name}-worker-0"}})
        created["status"] = {"phase": "Pending"}
        custom.replace_namespaced_custom_object_status(
            GROUP, VERSION, "floor", PLURAL, name, created
        )

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(writes, range(n)))
    return time.monotonic() - started


NODE = "bench-node"


def node_status() -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    capacity = {"cpu": "10000", "memory": "40Ti", "pods": "10000"}
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip
    return {"status": {"capacity": capacity, "allocatable": capacity, "conditions": [ready]}}


def keep_node(core: client.CoreV1Api, stop: threading.Event) -> None:
    """One Node for every worker Pod, kept Ready by heartbeats (no kubelet behind it: this
    script plays the kubelet)."""
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE)))
    core.patch_node_status(NODE, node_status())

    def beat() -> None:
        while not stop.wait(4):  # the local control plane's node-monitor grace is 20 s
            with contextlib.suppress(Exception):
                core.patch_node_status(NODE, node_status())

    threading.Thread(target=beat, daemon=True).start()


def shared_claim(core: client.CoreV1Api, path: Path) -> None:
    """The claim every bench job names (checkpoint.existingClaimName), bound to a static PV."""
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name="bench-shared"),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "1Ti"}, access_modes=["ReadWriteMany"],
            storage_class_name="manual", host_path=client.V1HostPathVolumeSource(path=str(path)),
            claim_ref=client.V1ObjectReference(namespace=NS, name="shared"),
        ),
    ))  # fmt: skip
    core.create_namespaced_persistent_volume_claim(NS, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="shared"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"], storage_class_name="manual",
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Ti"}),
        ),
    ))  # fmt: skip


def container(state: dict[str, Any], ready: bool) -> dict[str, Any]:
    return {"name": "trainer", "image": "t", "imageID": "", "ready": ready, "restartCount": 0,
            "state": state}  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8, help="operator reconcile threads")
    args = parser.parse_args()
    n = args.jobs

    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "cluster") as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        subprocess.run(
            [
                find_binary("kubectl"),
                "--kubeconfig",
                plane.kubeconfig,
                "apply",
                "--server-side",
                "-f",
                ROOT / "crds",
                "-f",
                ROOT / "config" / "trainer-policy.yaml",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                find_binary("kubectl"),
                "--kubeconfig",
                plane.kubeconfig,
                "wait",
                "--for=condition=Established",
                "crd/trainingjobs.kubetrain.io",
            ],
            check=True,
            capture_output=True,
        )
        scheduling = client.SchedulingV1Api(api)
        for name, value in (
            ("kubetrain-high", 1000),
            ("kubetrain-normal", 100),
            ("kubetrain-low", 10),
        ):
            scheduling.create_priority_class(
                client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=value)
            )
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        beating = threading.Event()
        keep_node(core, beating)
        shared_claim(core, Path(tmp) / "shared")

        (metrics_port,) = free_ports(1)
        log = Path(tmp) / "operator.log"
        operator = subprocess.Popen(
            operator_argv(plane.kubeconfig, metrics_port, "--workers", str(args.workers)),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape(metrics_port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

            created_at: dict[str, float] = {}
            pods_at: dict[str, float] = {}
            done = threading.Event()

            def watch_pods() -> None:
                w = watch.Watch()
                for event in w.stream(core.list_namespaced_pod, NS, timeout_seconds=600):
                    pod = event["object"]
                    if event["type"] == "ADDED":
                        pods_at.setdefault(
                            pod.metadata.labels["kubetrain.io/job-name"], time.monotonic()
                        )
                    if len(pods_at) >= n:
                        w.stop()
                done.set()

            watcher = threading.Thread(target=watch_pods, daemon=True)
            watcher.start()
            time.sleep(0.5)  # let the watch establish before the burst

            def create(i: int) -> None:
                name = f"job-{i:04d}"
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, job(name))
                created_at[name] = time.monotonic()

            burst = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, range(n)))
            applied = time.monotonic() - burst
            done.wait(600)
            creation = [pods_at[k] - created_at[k] for k in created_at if k in pods_at]
            all_pods = max(pods_at.values()) - burst

            # The kubelet: each Pod, once bound to the node, runs; then every job is Running.
            def run(i: int) -> None:
                name, now = f"job-{i:04d}-worker-0-a1", datetime.now(UTC).isoformat()
                while not core.read_namespaced_pod(name, NS).spec.node_name:
                    time.sleep(0.2)
                core.patch_namespaced_pod_status(name, NS, {"status": {
                    "phase": "Running", "startTime": now,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [container({"running": {"startedAt": now}}, True)],
                }})  # fmt: skip

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(run, range(n)))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
                if sum((j.get("status") or {}).get("phase") == "Running" for j in items) == n:
                    break
                time.sleep(1)
            started_writes = scrape(metrics_port)

            # Mirror latency: one report per job with a new checkpoint (a change written at
            # once; progress alone waits for statusIntervalSeconds), timed until status shows
            # it; the last ten jobs are stopped by their user instead, in the middle of that.
            stopping = [f"job-{i:04d}" for i in range(max(n - 10, 0), n)]
            running = [i for i in range(n) if f"job-{i:04d}" not in stopping]
            mirrored: dict[str, float] = {}
            patched: dict[str, float] = {}
            stop = threading.Event()

            def watch_jobs() -> None:
                w = watch.Watch()
                for event in w.stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    NS,
                    PLURAL,
                    timeout_seconds=600,
                ):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    latest = (obj.get("status") or {}).get("latestCheckpoint")
                    if latest == "step-7" and name in patched and name not in mirrored:
                        mirrored[name] = time.monotonic()
                    if len(mirrored) >= len(running) or stop.is_set():
                        w.stop()

            jw = threading.Thread(target=watch_jobs, daemon=True)
            jw.start()
            # Let the operator drain what the burst caused, then measure from a quiet spell.
            settle = time.monotonic()
            quiet_since, last = time.monotonic(), status_writes(metrics_port)
            while time.monotonic() - quiet_since < 4.0 and time.monotonic() - settle < 120:
                time.sleep(0.5)
                now_writes = status_writes(metrics_port)
                if now_writes != last:
                    quiet_since, last = time.monotonic(), now_writes
            settled = time.monotonic() - settle
            at = datetime.now(UTC).isoformat()
            checkpoint = {"id": "step-7", "epoch": 1, "step": 7, "createdAt": at, "path": "/c/7"}
            report = {
                "version": 1,
                "time": at,
                "epoch": 1,
                "totalEpochs": 1,
                "step": 7,
                "totalSteps": 10,
                "loss": 0.5,
                "checkpoints": [checkpoint],
            }

            def patch(i: int) -> None:
                name = f"job-{i:04d}"
                patched[name] = time.monotonic()
                core.patch_namespaced_pod(
                    f"{name}-worker-0-a1",
                    NS,
                    {"metadata": {"annotations": {ANNOTATION: json.dumps(report)}}},
                )

            # The stops: spec change -> worker Pod deleted.
            suspended: dict[str, float] = {}
            deleted: dict[str, float] = {}

            def watch_deletions() -> None:
                w = watch.Watch()
                for event in w.stream(core.list_namespaced_pod, NS, timeout_seconds=120):
                    pod = event["object"]
                    owner = pod.metadata.labels["kubetrain.io/job-name"]
                    gone = event["type"] == "DELETED" or pod.metadata.deletion_timestamp
                    if owner in suspended and gone:
                        deleted.setdefault(owner, time.monotonic())
                    if len(deleted) >= len(stopping):
                        w.stop()

            dw = threading.Thread(target=watch_deletions, daemon=True)
            dw.start()
            time.sleep(0.5)  # let the watch establish before the burst

            def suspend(name: str) -> None:
                suspended[name] = time.monotonic()
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, NS, PLURAL, name, {"spec": {"suspend": True}}
                )

            with ThreadPoolExecutor(8) as pool:
                reports = pool.map(patch, running)
                for name in stopping:
                    suspend(name)
                list(reports)
            dw.join(120)
            stops = [deleted[k] - suspended[k] for k in deleted]
            jw.join(120)
            stop.set()
            mirror = [mirrored[k] - patched[k] for k in mirrored]
            reported_writes = scrape(metrics_port)

            # Finish every Pod as a kubelet would, and wait for Completed.
            now = datetime.now(UTC).isoformat()

            def finish(i: int) -> None:
                core.patch_namespaced_pod_status(
                    f"job-{i:04d}-worker-0-a1",
                    NS,
                    {
                        "status": {
                            "phase": "Succeeded",
                            "containerStatuses": [container({"terminated": {
                                "exitCode": 0, "reason": "Completed",
                                "startedAt": now, "finishedAt": now}}, False)],
                        }
                    },
                )  # fmt: skip

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(finish, running))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
                completed = sum(
                    1 for j in items if (j.get("status") or {}).get("phase") == "Completed"
                )
                if completed == len(running):
                    break
                time.sleep(1)
            requests = scrape(metrics_port)
            rss = peak_rss_mb(operator.pid)
        finally:
            beating.set()
            operator.terminate()
            operator.wait(30)
        floor = unavoidable_writes(core, custom, n)

    writes = ("create", "update", "apply", "delete", "patch")
    # The report phase (one checkpoint report per job, ten stops) is the trainers' traffic:
    # the lifecycle is what the operator writes for create -> Running -> Completed.
    phase = {k: reported_writes.get(k, 0.0) - started_writes.get(k, 0.0) for k in requests}
    lifecycle = {k: v - phase.get(k, 0.0) for k, v in requests.items() if k in writes}
    total = sum(lifecycle.values())
    per_verb = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(lifecycle.items()) if v)
    print(
        f"operator benchmark: {n} TrainingJobs applied at once ({applied:.1f}s to submit), "
        f"{args.workers} reconcile workers"
    )
    print(
        f"  creation -> worker Pod created: p50 {statistics.median(creation):.2f}s "
        f"p99 {pct(creation, 0.99):.2f}s (all {len(creation)} Pods within {all_pods:.1f}s "
        "of the first apply)   target p99 <= 3s"
    )
    print(
        f"  the floor: one client's unavoidable writes for {n} jobs (job, Pod, one status "
        f"write) took {floor:.2f}s; creation p99 is {pct(creation, 0.99) / floor:.1f}x it   "
        "goal <= 2x"
    )
    print(
        f"  report with a new checkpoint -> status: p50 {statistics.median(mirror):.2f}s "
        f"p99 {pct(mirror, 0.99):.2f}s ({len(mirror)} of {len(running)} measured, one report "
        f"per job at once, after the operator was idle; it settled {settled:.1f}s after every "
        "job was Running)   goal p99 <= 1s"
    )
    print(
        f"  stop during that burst -> worker Pod deleted: "
        f"max {max(stops, default=float('nan')):.2f}s ({len(stops)} of {len(stopping)} jobs)"
    )
    print(
        f"  API writes per job lifecycle (create -> Running -> Completed): {total / n:.1f} "
        f"({per_verb})   goal <= 6; the report phase added "
        f"{sum(v for k, v in phase.items() if k in writes) / n:.1f} per job"
    )
    print(f"  jobs Completed: {completed} of {len(running)} (the others were stopped)")
    print(f"  operator peak RSS: {rss:.0f} MB   target <= 250 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
