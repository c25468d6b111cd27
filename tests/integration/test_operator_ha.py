"""Two operator replicas elect a leader: one acts, the other stands by and takes over.

Runs on a control plane of its own: the session's operator is standalone and would act
alongside any pair started here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.localcluster import ControlPlane, find_binary
from tests.integration.operator_fixtures import OperatorProcess, apply_crds, operator_config
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


LEASE_SECONDS = 6


class Replica(OperatorProcess):
    """An operator replica that takes part in leader election instead of running standalone."""

    def __init__(self, kubeconfig: Path, config: Path, log: Path) -> None:
        super().__init__(kubeconfig, config, log)
        self.metrics_port = free_port()

    def argv(self) -> list[str]:
        argv = [a for a in super().argv() if a != "--standalone"]
        return [*argv, "--lease-namespace", "default", "--metrics-port", str(self.metrics_port)]

    def start(self) -> None:
        os.environ["KUBETRAIN_LEASE_SECONDS"] = str(LEASE_SECONDS)
        os.environ["KUBETRAIN_METRICS_ADDRESS"] = "127.0.0.1"
        try:
            super().start()
        finally:
            del os.environ["KUBETRAIN_LEASE_SECONDS"], os.environ["KUBETRAIN_METRICS_ADDRESS"]

    def leading(self) -> bool:
        """Whether its last word on the Lease is that it leads."""
        text = self.log.read_text(errors="replace")
        return text.rfind("became the leader") > text.rfind("lost the lease")

    def identity(self) -> str:
        found = re.search(
            r"became the leader \(\S+\) as (\S+)", self.log.read_text(errors="replace")
        )
        assert found, self.tail()
        return found[1]

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def api_requests(self) -> float:
        """The reconciler's API requests so far (kubetrain_api_requests_total, every verb)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kubetrain_api_requests_total{")
        )


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("ha-cluster"))
    plane.start()
    apply_crds(plane)
    kubectl = [str(find_binary("kubectl")), "--kubeconfig", str(plane.kubeconfig)]
    subprocess.run(
        [*kubectl, "apply", "-f", str(ROOT / "config" / "priorityclasses.yaml")],
        check=True,
        capture_output=True,
    )
    try:
        yield plane
    finally:
        plane.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "modelType": "llm",
            "dataset": {"synthetic": {}},
            "llm": {"baseModel": "random://llama-tiny"},
            "resources": {"gpuType": "cpu"},
        },
    }


@pytest.fixture
def replicas(plane: ControlPlane, tmp_path: Path) -> Iterator[list[Replica]]:
    settings = operator_config(tmp_path)
    started = [Replica(plane.kubeconfig, settings, tmp_path / f"r{i}.log") for i in range(2)]
    for replica in started:
        replica.start()
    try:
        yield started
    finally:
        for replica in started:
            with contextlib.suppress(ProcessLookupError):
                replica.signal(signal.SIGCONT)
            replica.stop()


def elect(replicas: list[Replica]) -> tuple[Replica, Replica]:
    leaders = eventually(lambda: [r for r in replicas if r.leading()], what="a leader")
    assert len(leaders) == 1
    return leaders[0], next(r for r in replicas if r is not leaders[0])


def worker_pods(core: client.CoreV1Api, job: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = core.list_namespaced_pod(
        "default", label_selector=f"kubetrain.io/job-name={job}"
    ).items
    return pods


def test_only_the_leader_acts_and_a_standby_takes_over(
    plane: ControlPlane, replicas: list[Replica]
) -> None:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    coordination = client.CoordinationV1Api(api)
    leader, standby = elect(replicas)
    lease = coordination.read_namespaced_lease("kubetrain-operator", "default")
    assert lease.spec.holder_identity == leader.identity()

    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cpu_job("ha"))
    first = eventually(lambda: worker_pods(core, "ha"), what="a worker Pod")[0]
    assert not standby.leading()
    assert standby.api_requests() == 0  # the standby did nothing

    leader.kill()  # no clean shutdown: the Lease must expire
    core.delete_namespaced_pod(first.metadata.name, "default", grace_period_seconds=0)
    replaced = eventually(
        lambda: [p for p in worker_pods(core, "ha") if p.metadata.uid != first.metadata.uid],
        timeout=60,
        what="the standby to take the lease and replace the Pod",
    )
    assert len(replaced) == 1 and standby.leading()
    lease = coordination.read_namespaced_lease("kubetrain-operator", "default")
    assert lease.spec.holder_identity == standby.identity() != leader.identity()


def test_a_paused_leader_is_replaced_only_once_its_lease_expired_and_then_does_not_act(
    plane: ControlPlane, replicas: list[Replica]
) -> None:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    leader, standby = elect(replicas)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cpu_job("before"))
    eventually(lambda: worker_pods(core, "before"), what="the leader's worker Pod")
    # Idle: the job waits for a node (the plane has none); nothing changes, nothing is sent.
    seen: list[float] = []
    eventually(
        lambda: seen.append(leader.api_requests()) or seen[-2:-1] == seen[-1:],
        interval=1.0,
        what="the leader idle",
    )
    idle = seen[-1]

    leader.signal(signal.SIGSTOP)  # a stop-the-world pause: no renewals, no clean release
    paused = time.monotonic()
    eventually(standby.leading, timeout=4 * LEASE_SECONDS, what="the standby to take over")
    waited = time.monotonic() - paused
    assert waited >= LEASE_SECONDS - 1, f"took the lease {waited:.1f}s into the pause"

    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cpu_job("during"))
    eventually(lambda: worker_pods(core, "during"), what="the new leader's worker Pod")

    mark = len(leader.log.read_text(errors="replace"))
    leader.signal(signal.SIGCONT)  # it sees the new job at once, but its leadership has lapsed
    eventually(
        lambda: "lost the lease" in leader.log.read_text(errors="replace")[mark:],
        what="the resumed leader to stand by",
    )
    assert leader.api_requests() == idle  # not one request from its reconciler after the pause
    assert len(worker_pods(core, "during")) == 1


def test_the_operator_refuses_to_start_without_the_trainer_policy(
    plane: ControlPlane, tmp_path: Path
) -> None:
    kubectl = [str(find_binary("kubectl")), "--kubeconfig", str(plane.kubeconfig)]
    policy = ROOT / "config" / "trainer-policy.yaml"
    subprocess.run([*kubectl, "delete", "-f", policy], check=True, capture_output=True)
    operator = OperatorProcess(plane.kubeconfig, operator_config(tmp_path), tmp_path / "op.log")
    try:
        operator.start()
        assert operator.process is not None
        assert operator.process.wait(60) != 0
        assert "kubetrain-trainer-own-pod (and its binding) is not installed" in operator.tail()
    finally:
        operator.stop()
        subprocess.run([*kubectl, "apply", "-f", policy], check=True, capture_output=True)


def test_the_operator_refuses_to_start_with_kueue_on_where_kueue_is_not_installed(
    plane: ControlPlane, tmp_path: Path
) -> None:
    operator = OperatorProcess(plane.kubeconfig, operator_config(tmp_path), tmp_path / "op.log")
    os.environ["KUBETRAIN_KUEUE_ENABLED"] = "true"
    try:
        operator.start()
        assert operator.process is not None
        assert operator.process.wait(60) != 0
        assert "does not serve Kueue's Workloads (kueue.x-k8s.io/v1beta2)" in operator.tail()
    finally:
        del os.environ["KUBETRAIN_KUEUE_ENABLED"]
        operator.stop()
