"""Two operator replicas elect a leader: one acts, the other stands by and takes over.

Runs on a control plane of its own: the session's operator is standalone and would act
alongside any pair started here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.report import CHANNEL_PATH
from kubetrain.localcluster import ControlPlane, find_binary
from kubetrain.trainer.reporter import Channel, ChannelError, PushSink
from tests.integration.operator_fixtures import (
    OperatorProcess,
    apply_crds,
    operator_config,
    operator_identity,
    wait_for,
)
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


LEASE_SECONDS = 6
CHANNEL = "kubetrain.io/report-channel"
REPLICA_LABELS = {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/instance": "ha",
                  "app.kubernetes.io/component": "operator"}  # fmt: skip
REPLICA_SELECTOR = ",".join(f"{k}={v}" for k, v in REPLICA_LABELS.items())


class Replica(OperatorProcess):
    """An operator replica that takes part in leader election instead of running standalone.

    With ``pod`` it poses as that Pod of the operator's Deployment ($POD_NAME in default).
    """

    def __init__(
        self,
        kubeconfig: Path,
        config: Path,
        log: Path,
        *,
        pod: str | None = None,
        lease_seconds: int = LEASE_SECONDS,
    ) -> None:
        super().__init__(kubeconfig, config, log)
        self.metrics_port = free_port()
        self.pod, self.lease_seconds = pod, lease_seconds

    def argv(self) -> list[str]:
        argv = [a for a in super().argv() if a != "--standalone"]
        return [*argv, "--lease-namespace", "default", "--metrics-port", str(self.metrics_port)]

    def start(self) -> None:
        env = {"KUBETRAIN_LEASE_SECONDS": str(self.lease_seconds),
               "KUBETRAIN_METRICS_ADDRESS": "127.0.0.1"}  # fmt: skip
        if self.pod:
            env |= {"POD_NAME": self.pod, "POD_NAMESPACE": "default",
                    "KUBETRAIN_REPLICA_SELECTOR": REPLICA_SELECTOR}  # fmt: skip
        with environment(env):
            super().start()

    def started(self) -> bool:
        return "kubetrain operator started" in self.log.read_text(errors="replace")

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


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while a child process is started (it inherits them)."""
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            del os.environ[key]


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
    for replica in started:  # its metrics server and elector are up once it says so
        eventually(replica.started, what=f"{replica.log.name} started")
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


def operator_pod(name: str, serving: bool) -> client.V1Pod:
    """A Pod of the operator's Deployment for a replica to pose as (no node runs it)."""
    labels = REPLICA_LABELS | ({CHANNEL: "serving"} if serving else {})
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="operator", image="operator")]),
    )


def serving(core: client.CoreV1Api) -> set[str]:
    """The Pods the report channel's Service selects."""
    pods = core.list_namespaced_pod("default", label_selector=f"{REPLICA_SELECTOR},{CHANNEL}")
    return {p.metadata.name for p in pods.items}


@pytest.fixture
def posing(plane: ControlPlane, tmp_path: Path) -> Iterator[tuple[client.CoreV1Api, list[Replica]]]:
    """Two replicas posing as Pods op-0 and op-1, with the default lease (15 s), and a third
    Pod op-gone of a replica no longer running; every one of them still carries the channel
    label from an earlier life (a container restart keeps the Pod and its labels)."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(plane.kubeconfig)))
    for name in ("op-0", "op-1", "op-gone"):
        core.create_namespaced_pod("default", operator_pod(name, serving=True))
    settings = operator_config(tmp_path)
    started = [
        Replica(plane.kubeconfig, settings, tmp_path / f"op-{i}.log", pod=f"op-{i}",
                lease_seconds=15)
        for i in range(2)
    ]  # fmt: skip
    for replica in started:
        replica.start()
    for replica in started:  # its metrics server and elector are up once it says so
        eventually(replica.started, what=f"{replica.log.name} started")
    try:
        yield core, started
    finally:
        for replica in started:
            replica.stop()
        for name in ("op-0", "op-1", "op-gone"):
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_only_the_leaders_pod_carries_the_report_channel_label(
    posing: tuple[client.CoreV1Api, list[Replica]],
) -> None:
    core, replicas = posing
    leader, _ = elect(replicas)
    # The standby cleared its own at start-up; the leader cleared the gone replica's.
    eventually(lambda: serving(core) == {leader.pod}, what=f"only {leader.pod} serving")
    assert f"cleared {CHANNEL} from former leaders' Pods" in leader.log.read_text()


class LeaseRecords:
    """Every version of the Lease, as a watch delivers them: (holder, duration)."""

    def __init__(self, coordination: client.CoordinationV1Api) -> None:
        self.coordination, self.seen = coordination, list[tuple[str, int]]()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the watch ends with the test's own stop()
            self._follow()

    def _follow(self) -> None:
        for event in self._watch.stream(
            self.coordination.list_namespaced_lease, "default",
            field_selector="metadata.name=kubetrain-operator", timeout_seconds=120,
        ):  # fmt: skip
            spec = event["object"].spec
            self.seen.append((spec.holder_identity or "", spec.lease_duration_seconds or 0))

    def __enter__(self) -> LeaseRecords:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._watch.stop()


def test_a_terminated_leader_releases_the_lease_first_and_the_standby_leads_at_once(
    plane: ControlPlane, posing: tuple[client.CoreV1Api, list[Replica]]
) -> None:
    core, replicas = posing
    coordination = client.CoordinationV1Api(
        config.new_client_from_config(config_file=str(plane.kubeconfig))
    )
    leader, standby = elect(replicas)
    old, new = leader.identity(), ""
    eventually(lambda: serving(core) == {leader.pod}, what=f"{leader.pod} serving")
    with LeaseRecords(coordination) as records:
        eventually(lambda: records.seen, what="the Lease's first watch event")
        terminated = time.monotonic()
        leader.signal(signal.SIGTERM)  # as the kubelet stops a Pod in a rollout
        eventually(standby.leading, timeout=60, interval=0.02, what="the standby to lead")
        failover = time.monotonic() - terminated
        new = standby.identity()
        eventually(lambda: (new, 15) in records.seen, what="the new leader's Lease record")
    assert leader.process is not None
    assert leader.process.wait(60) == 0, leader.tail()
    said = leader.log.read_text()
    released = logged_between(said, "Signal SIGTERM is received", "released the lease")
    print(f"\nfailover (SIGTERM of the leader -> the standby leads): {failover:.2f}s; "
          f"SIGTERM -> lease released, in the leader's log: {released:.2f}s")  # fmt: skip
    assert "shut down (" in said  # every step ended within shutdownSeconds
    holders = [holder for holder, _ in records.seen]
    # The old leader cleared the holder itself; the standby took the Lease from that record.
    assert ("", 1) in records.seen, records.seen
    cleared = records.seen.index(("", 1))
    assert (
        old in holders[:cleared] and holders[cleared + 1 :] and set(holders[cleared + 1 :]) == {new}
    )
    assert "released the lease default/kubetrain-operator" in leader.log.read_text()
    log = standby.log.read_text()
    assert "took the lease default/kubetrain-operator: it was free (released)" in log
    assert "expired unrenewed" not in log  # not taken over after the lease ran out
    eventually(lambda: serving(core) == {standby.pod}, what=f"only {standby.pod} serving")


def logged_between(log: str, first: str, then: str) -> float:
    """Seconds between the log lines holding ``first`` and ``then`` (their timestamps)."""

    def stamp(text: str) -> datetime:
        line = next(line for line in log.splitlines() if text in line)
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    return (stamp(then) - stamp(first)).total_seconds()


class ChannelOperator(OperatorProcess):
    """The standalone operator serving the report channel with the TLS it keeps in a Secret,
    under the plain manifests' identity (config/rbac), in kubetrain-system."""

    SECRET = "kubetrain-report-channel-tls"

    def channel_argv(self) -> list[str]:
        url = f"https://127.0.0.1:{self.channel_port}"
        return ["--report-channel-listen", f"127.0.0.1:{self.channel_port}",
                "--report-channel-url", url]  # fmt: skip

    def start(self) -> None:
        with environment({"POD_NAMESPACE": "kubetrain-system",
                          "KUBETRAIN_REPORT_CHANNEL_SECRET": self.SECRET}):  # fmt: skip
            super().start()


def refused_for_its_token(sink: PushSink, what: str, operator: OperatorProcess) -> None:
    """The channel verified (TLS) and answered: a made-up token is refused with 401."""
    errors: list[str] = []

    def refused() -> bool:
        try:
            sink.send("{}")
        except ChannelError as err:
            errors.append(str(err))
            assert "CERTIFICATE_VERIFY_FAILED" not in str(err), err
        return bool(errors) and "answered 401" in errors[-1]

    try:
        wait_for(refused, what, operator=operator)
    except AssertionError as err:
        raise AssertionError(f"{err}\nlast answer: {errors[-1:]}") from None


def test_the_channels_ca_survives_a_restart_and_trainers_keep_verifying_it(
    plane: ControlPlane, tmp_path: Path
) -> None:
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(plane.kubeconfig)))
    identity = operator_identity(plane, core, tmp_path)
    operator = ChannelOperator(identity, operator_config(tmp_path), tmp_path / "op.log")
    token = tmp_path / "token"
    token.write_text("not-a-pod-token")
    try:
        operator.start()
        by_name = f"metadata.name={operator.SECRET}"
        secret = eventually(
            lambda: next(iter(core.list_namespaced_secret(
                "kubetrain-system", field_selector=by_name).items), None),
            timeout=60, what="the operator to make the channel's Secret",
        )  # fmt: skip
        ca = base64.b64decode(secret.data["ca.crt"]).decode()
        # A trainer's client, built once from the CA its Pod was given.
        url = f"https://127.0.0.1:{operator.channel_port}{CHANNEL_PATH}"
        sink = PushSink(Channel(url, ca, token, 1.0))
        refused_for_its_token(sink, "the channel verified", operator)

        operator.stop()  # a restart, as after a GitOps sync or an upgrade
        operator.start()
        wait_for(
            lambda: "kubetrain operator started" in operator.tail(5),
            "the restarted operator",
            operator=operator,
        )
        refused_for_its_token(sink, "the channel verified again", operator)
        kept = core.read_namespaced_secret(operator.SECRET, "kubetrain-system")
        assert kept.data == secret.data  # neither the CA nor the certificate was made anew
        restarted = operator.log.read_text().split("kubetrain operator started")[1]
        assert "made the report channel's CA" not in restarted
        assert "renewed the report channel's" not in restarted
    finally:
        operator.stop()


def test_a_default_gpu_job_schedules_on_a_node_without_the_product_label(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """The built-in catalogue on a cluster without GPU Feature Discovery (GKE, EKS, AKS):
    the node has GPUs, but no nvidia.com/gpu.product label."""
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    node, namespace = "gpu-no-gfd-0", "gpu-placement"
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"}
    ready = {"type": "Ready", "status": "True", "reason": "TestHeartbeat"}
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
        name=node, labels={"kubernetes.io/hostname": node})))  # fmt: skip
    core.patch_node_status(node, {"status": {"capacity": capacity, "allocatable": capacity,
                                             "conditions": [ready]}})  # fmt: skip
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("terminationGracePeriodSeconds: 30\n")  # the built-in GPU catalogue
    operator = OperatorProcess(plane.kubeconfig, defaults, tmp_path / "op.log", channel=False)
    operator.argv = lambda: [  # type: ignore[method-assign]
        namespace if arg == "!nop-*,!e2e-*,!kueue-*" else arg
        for arg in OperatorProcess.argv(operator)
    ]
    job = cpu_job("a100-job")
    job["spec"]["resources"] = {"gpuType": "a100", "gpusPerWorker": 1}
    job["spec"]["checkpoint"] = {"storageClassName": "manual", "size": "1Gi"}
    volume = "pv-gpu-placement"  # no provisioner here: a volume bound to the job's claim
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=volume),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "1Gi"}, access_modes=["ReadWriteOnce"],
            storage_class_name="manual", host_path=client.V1HostPathVolumeSource(path="/tmp/pv"),
            claim_ref=client.V1ObjectReference(namespace=namespace, name="a100-job-checkpoints"),
        ),
    ))  # fmt: skip
    try:
        operator.start()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        pods: list[client.V1Pod] = []

        def scheduled() -> client.V1Pod | None:
            pods[:] = core.list_namespaced_pod(namespace).items
            return next((p for p in pods if p.spec.node_name), None)

        try:
            pod = wait_for(scheduled, "the worker scheduled", timeout=60, operator=operator)
        except AssertionError as err:
            status = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "a100-job"
            ).get("status")
            raise AssertionError(
                f"{err}\npods: {[p.status for p in pods]}\njob: {status}"
            ) from None
        assert pod.spec.node_name == node
        assert (
            pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
            is None
        )
    finally:
        operator.stop()
        core.delete_namespace(namespace)
        core.delete_persistent_volume(volume)
        core.delete_node(node)
