"""Steady state on the real local control plane: N running jobs, every trainer reporting.

Prints the API writes that running jobs cost, per running job per minute, split into the
trainers' report patches and the operator's own writes (status and the rest), against the
goal of 3; how stale progress in status gets, and how fast a new checkpoint shows; and the
operator's CPU and RSS. The kubelet and the trainers are played by this script: each job's
worker Pod is marked Running, and its trainer reports one step further at the operator's
default pace, each 60th report with a new checkpoint. ``--channel push`` (the default)
reports the way trainers do when the operator serves its report channel: HTTPS with a token
bound to the Pod (from the TokenRequest API, as a kubelet projects it), every
reportChannelIntervalSeconds. ``--channel annotation`` patches the Pod's annotation every
reportIntervalSeconds instead, as trainers do without the channel.

    .venv/bin/python bench/bench_steady_state.py [--jobs 1000] [--window 60] [--channel push]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from benchlib import job, operator_metrics  # noqa: E402

from kubetrain.api.base import GROUP, PLURAL, VERSION  # noqa: E402
from kubetrain.api.report import ANNOTATION, CHANNEL_AUDIENCE  # noqa: E402
from kubetrain.localcluster import ControlPlane, find_binary  # noqa: E402
from kubetrain.localcluster.pki import report_channel_flags  # noqa: E402
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bound_token(core: client.CoreV1Api, pod: str, uid: str) -> str:
    token: str = core.create_namespaced_service_account_token(
        "kubetrain-trainer",
        NS,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[CHANNEL_AUDIENCE],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod, uid=uid
                ),
            )
        ),
    ).status.token
    return token


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
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--channel", choices=("push", "annotation"), default="push")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--unrelated", type=int, default=0, help="Pods of no TrainingJob, made before the jobs"
    )
    args = parser.parse_args()
    n, window, push = args.jobs, args.window, args.channel == "push"
    defaults = Settings()
    interval = (
        defaults.report_channel_interval_seconds if push else defaults.report_interval_seconds
    )
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
        port, channel_port = free_ports(2)
        tls, url = Path(tmp) / "channel-tls", f"https://127.0.0.1:{channel_port}"
        channel = report_channel_flags(tls, channel_port)
        log = Path(tmp) / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubetrain", "--kubeconfig", str(plane.kubeconfig),
             "--standalone", "--liveness", "", "--metrics-port", str(port),
             *(channel if push else [])],
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

            tokens: dict[str, str] = {}
            if push:  # the Pods' bound report tokens, as a kubelet would project them
                uids = {p.metadata.name: p.metadata.uid for p in core.list_namespaced_pod(NS).items}
                pod_of = {m: f"{m}-worker-0-a1" for m in names}
                with ThreadPoolExecutor(16) as pool:
                    made = pool.map(lambda m: bound_token(core, pod_of[m], uids[pod_of[m]]), names)
                    tokens = dict(zip(names, made, strict=True))
            https = urllib3.PoolManager(
                maxsize=8, ssl_context=ssl.create_default_context(cafile=str(tls / "ca.crt"))
            )

            # Trainers: one report per job every `interval`, spread evenly, a step each; each
            # 60th report of a job (at a different report for each job) adds a checkpoint.
            step = dict.fromkeys(names, 0)
            sent: dict[tuple[str, int], float] = {}
            latest: dict[str, int] = {}
            checkpoints: dict[tuple[str, str], float] = {}
            stop = threading.Event()
            reports = [0]
            refused: list[str] = []

            def report(name: str, offset: int) -> None:
                step[name] += 1
                at = step[name]
                body: dict[str, Any] = {
                    "version": 1,
                    "time": datetime.now(UTC).isoformat(),
                    "epoch": 1,
                    "totalEpochs": 1,
                    "step": at,
                    "totalSteps": 100_000,
                    "loss": 2.0,
                }
                if at > 2 and (at + offset) % 60 == 0:
                    made = {"id": f"step-{at}", "epoch": 1, "step": at, "createdAt": body["time"]}
                    body["checkpoints"] = [{**made, "path": f"/c/{at}"}]
                    checkpoints[(name, f"step-{at}")] = time.monotonic()
                sent[(name, at)] = time.monotonic()
                latest[name] = at
                text = json.dumps(body)
                if push:
                    answer = https.request(
                        "POST", f"{url}/v1/reports", body=text.encode(),
                        headers={"Authorization": f"Bearer {tokens[name]}"}, retries=False,
                    )  # fmt: skip
                    if answer.status != 202:
                        refused.append(f"{answer.status} {answer.data[:200]!r}")
                else:
                    core.patch_namespaced_pod(
                        f"{name}-worker-0-a1", NS, {"metadata": {"annotations": {ANNOTATION: text}}}
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
                        pool.submit(report, names[tick % n], tick % n)
                        tick += 1

            # Staleness: each second, how long each job's status has lagged its trainer (the
            # age of the oldest report not yet in status); and report -> status for checkpoints.
            shown: dict[str, int] = {}
            phases: dict[str, str] = {}
            lag: list[float] = []
            checkpoint_delay: list[float] = []
            measuring = threading.Event()

            def watch_jobs() -> None:
                try:
                    follow_jobs()
                except Exception:
                    if not stop.is_set():  # the control plane going away at the end is fine
                        raise

            def follow_jobs() -> None:
                w = watch.Watch()
                for event in w.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                    timeout_seconds=int(window) + 600,
                ):  # fmt: skip
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    status = obj.get("status") or {}
                    shown[name] = (status.get("progress") or {}).get("currentStep") or 0
                    phases[name] = status.get("phase") or ""
                    made = checkpoints.pop((name, status.get("latestCheckpoint") or ""), None)
                    if measuring.is_set() and made is not None:
                        checkpoint_delay.append(time.monotonic() - made)
                    if stop.is_set():
                        w.stop()

            def sample() -> None:
                while not stop.wait(1.0):
                    if not measuring.is_set():
                        continue
                    now = time.monotonic()
                    for name in names:
                        behind = sent.get((name, shown.get(name, 0) + 1))
                        lag.append(
                            now - behind
                            if behind and latest.get(name, 0) > shown.get(name, 0)
                            else 0.0
                        )

            threading.Thread(target=trainers, daemon=True).start()
            threading.Thread(target=watch_jobs, daemon=True).start()
            threading.Thread(target=sample, daemon=True).start()
            # Warm up until the jobs' start is taken in (at 1,000 jobs the operator is still
            # recording it well after the Pods run): every job Running in status, or no more
            # of them for two report intervals; then each reported twice more.
            deadline, settled = time.monotonic() + 300, time.monotonic() + 2 * interval
            running = 0
            while running < n and time.monotonic() < min(settled, deadline):
                time.sleep(0.5)
                now_running = sum(phases.get(m) == "Running" for m in names)
                if now_running > running:
                    running, settled = now_running, time.monotonic() + 2 * interval
            time.sleep(2 * interval)
            before, cpu0, reports0 = operator_metrics(port), cpu_seconds(operator.pid), reports[0]
            measuring.set()
            started = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - started
            after, cpu1, reports1 = operator_metrics(port), cpu_seconds(operator.pid), reports[0]
            stop.set()
            rss = rss_mb(operator.pid)
            posted: dict[str, int] = {}  # the operator's Events of the window, by reason
            window_start = datetime.now(UTC).timestamp() - elapsed
            for event in core.list_namespaced_event(NS).items:
                at = event.last_timestamp or event.event_time or event.first_timestamp
                if at is not None and at.timestamp() >= window_start - 1:
                    reason = event.reason or ""
                    posted[reason] = posted.get(reason, 0) + (event.count or 1)
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
    sent_rate = (reports1 - reports0) / n / minutes
    report_rate = 0.0 if push else sent_rate  # a push is no API write
    operator_writes = sum(per_job.get(verb, 0.0) for verb in WRITES)
    total = report_rate + operator_writes
    how = "pushed on the report channel" if push else "patched onto their Pods"
    print(
        f"steady state: {n} running jobs, trainers reporting every {interval:g}s ({how}), "
        f"status at most every {defaults.status_interval_seconds:g}s, {elapsed:.0f}s measured, "
        f"{args.unrelated} unrelated Pods in the cluster; {running} of the {n} jobs Running in "
        "status when the window opened"
    )
    if push:
        pushed = after.get("pushed", 0.0) - before.get("pushed", 0.0)
        print(
            f"  channel: {pushed:.0f} reports pushed ({pushed / elapsed:.0f}/s), "
            f"{after.get('token_reviews', 0.0):.0f} TokenReviews in all (one per token), "
            f"{len(refused)} refused{': ' + refused[0] if refused else ''}"
        )
    print(
        f"  writes per running job per minute: {total:.1f} (report patches {report_rate:.1f} "
        f"of {sent_rate:.1f} reports, "
        f"operator {operator_writes:.1f}: status {per_job.get('status', 0.0):.1f}, other "
        f"{abs(operator_writes - per_job.get('status', 0.0)):.1f})   goal <= {GOAL:g} "
        f"(ratio {total / GOAL:.1f}x)"
    )
    verbs = ", ".join(f"{verb} {per_job.get(verb, 0.0):.2f}" for verb in WRITES)
    print(f"  the operator's writes by verb, per running job per minute: {verbs}")
    events = ", ".join(f"{r} {c}" for r, c in sorted(posted.items())) or "none"
    print(f"  Events posted in the window: {events}")
    print(
        f"  all jobs: {total * n / 60:.0f} writes/s to the API server, "
        f"{total * 1000 / 60:.0f} writes/s at 1,000 jobs at this rate"
    )
    if lag:
        print(
            f"  progress in status behind the trainer: p50 {percentile(lag, 0.5):.1f}s "
            f"p99 {percentile(lag, 0.99):.1f}s max {max(lag):.1f}s   goal <= 15s"
        )
    if checkpoint_delay:
        print(
            f"  new checkpoint -> status: p50 {percentile(checkpoint_delay, 0.5):.2f}s "
            f"p99 {percentile(checkpoint_delay, 0.99):.2f}s ({len(checkpoint_delay)} checkpoints)"
            "   goal <= 1s p99"
        )
    print(
        f"  operator CPU {(cpu1 - cpu0) / elapsed:.2f} cores, RSS {rss:.0f} MB   "
        "goal <= 0.5 cores, <= 200 MB (at 1,000 jobs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
