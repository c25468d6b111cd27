"""``make demo``: a tiny LoRA TrainingJob on the local cluster, stopped and resumed on the way.

Expects the local cluster to be up (``make cluster-up``). Installs the CRD and the
PriorityClasses, runs the operator as a local process (recorded so ``make cluster-down``
stops it), submits ``examples/tiny-lora-cpu.yaml``, shows its progress live, suspends it
once it is partly trained, shows the checkpoint it stopped at, resumes it, and follows it
to completion.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.job import TrainingJob
from kubetrain.api.status import Phase
from kubetrain.cli import views
from kubetrain.cli.term import Style
from kubetrain.localcluster import find_binary, kueue
from kubetrain.localcluster.controlplane import repo_root
from kubetrain.localcluster.pki import report_channel_flags
from kubetrain.localcluster.ports import free_ports
from kubetrain.localcluster.processes import record_extra, running_extra

NAMESPACE = "default"
BAR_WIDTH = 20


class Screen:
    """One status line, redrawn in place on a terminal, appended when piped."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.style = Style.for_stream(sys.stdout)
        self.last = ""

    def status(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def say(self, line: str = "") -> None:
        if self.tty and self.last:
            sys.stdout.write("\n")
        self.last = ""
        print(line, flush=True)


def describe(body: dict[str, Any], style: Style) -> str:
    """``Running  [████░░░░] 46.2%  epoch 2/3  step 320/693  loss 5.799  ETA 8s  ckpt …``,
    drawn with the views ``kubectl train watch`` and ``describe`` use."""
    job = TrainingJob.model_validate(body)
    phase = job.status.phase or Phase.PENDING  # not yet written: the operator has not looked
    parts = [
        style.phase(phase) + " " * (9 - len(phase.value)),
        views.progress_text(job, style, BAR_WIDTH),
        f"epoch {views.epoch(job)}",
        f"step {views.step(job)}",
        f"loss {views.loss(job)}",
        f"ETA {views.eta(job)}",
    ]
    if job.status.latest_checkpoint:
        parts.append(f"ckpt {job.status.latest_checkpoint}")
    return "  ".join(parts)


def start_operator(workdir: Path, kubeconfig: Path) -> None:
    """Run the operator as a local process unless one from an earlier demo still runs.

    It is recorded with the cluster, so ``make cluster-down`` stops it by its PID.
    """
    if running_extra(workdir, "operator"):
        return
    log = (workdir / "logs" / "operator.log").open("ab")
    (port,) = free_ports(1)  # the report channel, on loopback as trainers on this node reach it
    argv = [
        sys.executable,
        "-m",
        "kubetrain",
        "--kubeconfig",
        str(kubeconfig),
        "--standalone",
        "--metrics-port",
        "0",
        "--liveness",
        "",
        "--status-interval-seconds",
        "1",
        "--resync-seconds",
        "3",
        "--report-interval-seconds",  # a lively screen for a job that lasts a minute
        "2",
        "--report-channel-interval-seconds",
        "2",
        *report_channel_flags(workdir / "report-channel-tls", port),
    ]
    env = dict(os.environ)
    if (queues := kueue.recorded(workdir)) is not None:  # `make cluster-up KUEUE=1`
        env |= {
            "KUBETRAIN_KUEUE_ENABLED": "true",
            "KUBETRAIN_KUEUE_VISIBILITY_URL": queues["visibilityUrl"],
        }
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    record_extra(workdir, "operator", process.pid, sys.executable)


def install(kubeconfig: Path) -> None:
    kubectl = [str(find_binary("kubectl")), "--kubeconfig", str(kubeconfig)]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(repo_root() / "crds")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd/trainingjobs.kubetrain.io"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *kubectl,
            "apply",
            "-f",
            str(repo_root() / "config" / "priorityclasses.yaml"),
            "-f",
            str(repo_root() / "config" / "trainer-policy.yaml"),
        ],
        check=True,
        capture_output=True,
    )


class Demo:
    def __init__(self, kubeconfig: Path, manifest: dict[str, Any], screen: Screen) -> None:
        api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.custom = client.CustomObjectsApi(api)
        self.manifest, self.name = manifest, manifest["metadata"]["name"]
        self.screen = screen

    def job(self) -> dict[str, Any]:
        job: Any = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, self.name
        )
        return dict(job)

    def status(self) -> dict[str, Any]:
        return dict(self.job().get("status") or {})

    def follow(self, until: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job()
            status = dict(job.get("status") or {})
            self.screen.status(describe(job, self.screen.style))
            if status.get("phase") == "Failed":
                failed: dict[str, Any] = next(
                    (c for c in status.get("conditions", []) if c["type"] == "Failed"), {}
                )
                raise SystemExit(f"\nthe job failed: {failed.get('message', '')}")
            if until(status):
                return status
            time.sleep(0.5)
        raise SystemExit(f"\ntimed out after {timeout:.0f}s; see kubectl describe tj {self.name}")

    def patch(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, self.name, {"spec": spec}
        )

    def run(self, stop_at: float, timeout: float) -> None:
        say = self.screen.say
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, self.name
            )
            say(f"deleted the {self.name} TrainingJob of an earlier demo")
            while True:
                try:
                    self.status()
                except ApiException:
                    break
                time.sleep(0.5)
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, self.manifest
        )
        say(f"submitted TrainingJob {self.name}: {self.manifest['spec'].get('description', '')}")
        self.follow(
            lambda s: (
                (s.get("progress") or {}).get("percentage", 0) >= stop_at
                and s.get("latestCheckpoint")
            ),
            timeout,
        )

        say("stopping it (spec.suspend: true): the trainer writes a checkpoint and exits")
        self.patch({"suspend": True})
        stopped = self.follow(lambda s: s.get("phase") == "Stopped", timeout)
        step = (stopped.get("progress") or {}).get("currentStep")
        say(f"stopped at step {step}; checkpoints on the volume:")
        for ckpt in stopped.get("checkpoints", []):
            loss = ckpt.get("loss", float("nan"))
            where = f"epoch {ckpt.get('epoch')}  step {ckpt.get('step')}"
            say(f"    {ckpt['id']:<28} {where}  loss {loss:.3f}")

        say(f"resuming it (spec.suspend: false) from {stopped.get('latestCheckpoint')}")
        self.patch({"suspend": False})
        self.follow(lambda s: s.get("attempt", 0) >= 2 and s.get("phase") == "Running", timeout)
        done = self.follow(lambda s: s.get("phase") == "Completed", timeout)
        model = (done.get("model") or {}).get("path", "?")
        steps = (done.get("progress") or {}).get("currentStep")
        best = (done.get("metrics") or {}).get("bestLoss", float("nan"))
        say(f"completed: {steps} steps, best loss {best:.3f}, resumed once from step {step}")
        say(f"the LoRA adapter is on the checkpoint volume at {model}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".cluster"))
    parser.add_argument("--job", type=Path, default=repo_root() / "examples" / "tiny-lora-cpu.yaml")
    parser.add_argument("--stop-at", type=float, default=40.0, help="percent done before the stop")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    kubeconfig = workdir / "kubeconfig"
    if not kubeconfig.exists():
        print("the local cluster is not up: run `make cluster-up` first", file=sys.stderr)
        return 1
    screen = Screen()
    install(kubeconfig)
    start_operator(workdir, kubeconfig)
    screen.say(f"operator running (log: {workdir / 'logs' / 'operator.log'})")
    manifest = yaml.safe_load(args.job.read_text())
    Demo(kubeconfig, manifest, screen).run(args.stop_at, args.timeout)
    k = f"bin/kubectl --kubeconfig {kubeconfig}"
    name = manifest["metadata"]["name"]
    screen.say()
    screen.say("try it yourself:")
    screen.say(f"  {k} get tj                      # the job, its progress and loss")
    screen.say(f"  {k} describe tj {name}          # conditions, checkpoints, Events")
    screen.say(f"  {k} get tj {name} -o jsonpath='{{.status.checkpoints}}'")
    screen.say(f"  {k} apply -f examples/tiny-vision-cpu.yaml   # a vision job")
    screen.say("  make cluster-down              # stop everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
