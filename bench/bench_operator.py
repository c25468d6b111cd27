"""Operator benchmark on the real local control plane: N TrainingJobs applied at once.

Prints: creation -> all worker Pods created (p50/p99), status-mirror latency from a
progress-annotation patch to the job's status (p50/p99), API requests the reconciler
sent per job lifecycle (create -> report -> Completed), and the operator's peak RSS.
The kubelet is played by this script (no node agent): Pods are not scheduled, their
status is written as a kubelet would write it.

    .venv/bin/python bench/bench_operator.py [--jobs 500]
"""

from __future__ import annotations

import argparse
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

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import job, operator_metrics  # noqa: E402

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

        (metrics_port,) = free_ports(1)
        log = Path(tmp) / "operator.log"
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetrain",
                "--kubeconfig",
                str(plane.kubeconfig),
                "--standalone",
                "--liveness",
                "",
                "--metrics-port",
                str(metrics_port),
                "--workers",
                str(args.workers),
            ],
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

            # Mirror latency: one report per job, timed until status shows it; the last
            # ten jobs are stopped by their user instead, in the middle of that burst.
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
                    step = ((obj.get("status") or {}).get("progress") or {}).get("currentStep")
                    if step == 7 and name in patched and name not in mirrored:
                        mirrored[name] = time.monotonic()
                    if len(mirrored) >= len(running) or stop.is_set():
                        w.stop()

            jw = threading.Thread(target=watch_jobs, daemon=True)
            jw.start()
            # Measure a report that arrives after a quiet spell, as the trainer's reports
            # (every 5 s) do: first let the operator drain the writes the burst caused (the
            # Queued transitions once the scheduler has looked at every Pod), then let one
            # status throttle window (3 s by default) pass with no write at all.
            settle = time.monotonic()
            quiet_since, last = time.monotonic(), status_writes(metrics_port)
            while time.monotonic() - quiet_since < 4.0 and time.monotonic() - settle < 120:
                time.sleep(0.5)
                now_writes = status_writes(metrics_port)
                if now_writes != last:
                    quiet_since, last = time.monotonic(), now_writes
            settled = time.monotonic() - settle
            report = {
                "version": 1,
                "time": datetime.now(UTC).isoformat(),
                "epoch": 1,
                "totalEpochs": 1,
                "step": 7,
                "totalSteps": 10,
                "loss": 0.5,
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

            # Finish every Pod as a kubelet would, and wait for Completed.
            now = datetime.now(UTC).isoformat()

            def finish(i: int) -> None:
                core.patch_namespaced_pod_status(
                    f"job-{i:04d}-worker-0-a1",
                    NS,
                    {
                        "status": {
                            "phase": "Succeeded",
                            "containerStatuses": [
                                {
                                    "name": "trainer",
                                    "image": "t",
                                    "imageID": "",
                                    "ready": False,
                                    "restartCount": 0,
                                    "state": {
                                        "terminated": {
                                            "exitCode": 0,
                                            "reason": "Completed",
                                            "startedAt": now,
                                            "finishedAt": now,
                                        }
                                    },
                                }
                            ],
                        }
                    },
                )

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
            operator.terminate()
            operator.wait(30)
        floor = unavoidable_writes(core, custom, n)

    total = sum(requests.values())
    per_verb = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(requests.items()))
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
        f"  report patch -> status mirrored: p50 {statistics.median(mirror):.2f}s "
        f"p99 {pct(mirror, 0.99):.2f}s ({len(mirror)} of {len(running)} measured, one report "
        f"per job at once, after the operator was idle; it settled {settled:.1f}s after the "
        "last Pod)"
        "   target p99 <= 2s"
    )
    print(
        f"  stop during that burst -> worker Pod deleted: "
        f"max {max(stops, default=float('nan')):.2f}s ({len(stops)} of {len(stopping)} jobs)"
    )
    print(f"  API requests per job lifecycle: {total / n:.1f} ({per_verb}; watches not counted)")
    print(f"  jobs Completed: {completed} of {len(running)} (the others were stopped)")
    print(f"  operator peak RSS: {rss:.0f} MB   target <= 250 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
