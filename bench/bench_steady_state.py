"""Steady state on the real local control plane: N running jobs, every trainer reporting.

Prints the API writes that running jobs cost, per running job per minute, split into the
trainers' report patches and the operator's own writes (status and the rest), against the
goal of 3; how stale progress in status gets; and the operator's CPU and RSS. The kubelet
and the trainers are played by this script: each job's worker Pod is marked Running and
its report annotation patched every reportIntervalSeconds (the operator's default, which
the operator also hands the real trainers), each report one step further.

    .venv/bin/python bench/bench_steady_state.py [--jobs 300] [--window 60]
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(ROOT / "operator"))

from benchlib import job, operator_metrics  # noqa: E402

from kubetrain.api.base import GROUP, PLURAL, VERSION  # noqa: E402
from kubetrain.api.report import ANNOTATION  # noqa: E402
from kubetrain.localcluster import ControlPlane, find_binary  # noqa: E402
from kubetrain.localcluster.ports import free_ports  # noqa: E402
from kubetrain.operator.settings import Settings  # noqa: E402

NS = "steady"
WRITES = ("create", "update", "apply", "delete", "patch")
GOAL = 3.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def running_status() -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "status": {
            "phase": "Running",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "t",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--unrelated", type=int, default=0, help="Pods of no TrainingJob, made before the jobs"
    )
    args = parser.parse_args()
    n, window = args.jobs, args.window
    interval = Settings().report_interval_seconds
    names = [f"job-{i:04d}" for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "cluster") as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        kubectl = [find_binary("kubectl"), "--kubeconfig", plane.kubeconfig]
        config_dir = ROOT / "config"
        for manifest in (
            ROOT / "crds",
            config_dir / "priorityclasses.yaml",
            config_dir / "trainer-policy.yaml",
        ):
            subprocess.run([*kubectl, "apply", "-f", manifest], check=True, capture_output=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "crd/trainingjobs.kubetrain.io"],
            check=True,
            capture_output=True,
        )
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        if args.unrelated:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="others")))
            other = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web"}]},
            }
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: core.create_namespaced_pod("others", {
                    **other, "metadata": {**other["metadata"], "name": f"web-{i:05d}"}}),
                    range(args.unrelated)))  # fmt: skip
        (port,) = free_ports(1)
        log = Path(tmp) / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubetrain", "--kubeconfig", str(plane.kubeconfig),
             "--standalone", "--liveness", "", "--metrics-port", str(port)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    operator_metrics(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda m: custom.create_namespaced_custom_object(
                    GROUP, VERSION, NS, PLURAL, job(m)), names))  # fmt: skip
            pods = [f"{m}-worker-0-a1" for m in names]
            deadline = time.monotonic() + 300
            while len(core.list_namespaced_pod(NS).items) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator did not create every worker Pod")
                time.sleep(1)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda p: core.patch_namespaced_pod_status(
                    p, NS, running_status()), pods))  # fmt: skip

            # Trainers: one report per job every `interval`, spread evenly, a step each.
            step = dict.fromkeys(names, 0)
            sent: dict[tuple[str, int], float] = {}
            stop = threading.Event()
            reports = [0]

            def report(name: str) -> None:
                step[name] += 1
                body = {
                    "version": 1,
                    "time": datetime.now(UTC).isoformat(),
                    "epoch": 1,
                    "totalEpochs": 1,
                    "step": step[name],
                    "totalSteps": 100_000,
                    "loss": 2.0,
                }
                sent[(name, step[name])] = time.monotonic()
                core.patch_namespaced_pod(
                    f"{name}-worker-0-a1",
                    NS,
                    {"metadata": {"annotations": {ANNOTATION: json.dumps(body)}}},
                )
                reports[0] += 1

            def trainers() -> None:
                with ThreadPoolExecutor(8) as pool:
                    start = time.monotonic()
                    tick = 0
                    while not stop.is_set():
                        due = start + tick * interval / n
                        if (wait := due - time.monotonic()) > 0:
                            stop.wait(wait)
                        pool.submit(report, names[tick % n])
                        tick += 1

            # Staleness: from a report's patch to its step appearing in status.
            shown: list[float] = []
            measuring = threading.Event()

            def watch_jobs() -> None:
                w = watch.Watch()
                for event in w.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                    timeout_seconds=int(window) + 120,
                ):  # fmt: skip
                    obj = event["object"]
                    progress = (obj.get("status") or {}).get("progress") or {}
                    at = sent.get((obj["metadata"]["name"], progress.get("currentStep") or -1))
                    if measuring.is_set() and at is not None:
                        shown.append(time.monotonic() - at)
                    if stop.is_set():
                        w.stop()

            threading.Thread(target=trainers, daemon=True).start()
            threading.Thread(target=watch_jobs, daemon=True).start()
            time.sleep(2 * interval)  # warm up: every job reported twice, status caught up
            before, cpu0, reports0 = operator_metrics(port), cpu_seconds(operator.pid), reports[0]
            measuring.set()
            started = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - started
            after, cpu1, reports1 = operator_metrics(port), cpu_seconds(operator.pid), reports[0]
            stop.set()
            rss = rss_mb(operator.pid)
        finally:
            operator.terminate()
            stopping = time.monotonic()
            try:
                operator.wait(60)
                print(f"(operator exited {time.monotonic() - stopping:.1f}s after SIGTERM)",
                      file=sys.stderr)  # fmt: skip
            except subprocess.TimeoutExpired:
                print(log.read_text()[-3000:], file=sys.stderr)
                operator.kill()
                raise

    minutes = elapsed / 60
    per_job = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / n / minutes for k in after}
    report_rate = (reports1 - reports0) / n / minutes
    operator_writes = sum(per_job.get(verb, 0.0) for verb in WRITES)
    total = report_rate + operator_writes
    print(
        f"steady state: {n} running jobs, trainers reporting every {interval:g}s, "
        f"{elapsed:.0f}s measured, {args.unrelated} unrelated Pods in the cluster"
    )
    print(
        f"  writes per running job per minute: {total:.1f} (reports {report_rate:.1f}, "
        f"operator {operator_writes:.1f}: status {per_job.get('status', 0.0):.1f}, other "
        f"{operator_writes - per_job.get('status', 0.0):.1f})   goal <= {GOAL:g} "
        f"(ratio {total / GOAL:.1f}x)"
    )
    print(
        f"  all jobs: {total * n / 60:.0f} writes/s to the API server, "
        f"{total * 1000 / 60:.0f} writes/s at 1,000 jobs at this rate"
    )
    if shown:
        ordered = sorted(shown)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(
            f"  report -> status: p50 {statistics.median(shown):.2f}s p99 {p99:.2f}s; progress "
            f"in status at most {interval + p99:.0f}s stale (report interval + p99)   goal <= 15s"
        )
    print(
        f"  operator CPU {(cpu1 - cpu0) / elapsed:.2f} cores, RSS {rss:.0f} MB   "
        "goal <= 0.5 cores, <= 200 MB (at 1,000 jobs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
