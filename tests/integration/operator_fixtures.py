"""Fixtures for running the real operator against the local control plane.

The trainer and the kubelet are played by the test (see ``kubelet.py``): worker Pods are
placed by the real scheduler on Node objects the tests register (no node agent runs them),
and the test writes their status and progress reports as a kubelet and a trainer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.localcluster import ControlPlane, find_binary
from kubetrain.localcluster.pki import report_channel_flags
from kubetrain.localcluster.ports import free_ports
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
POOL_LABEL = "kubetrain.io/test-pool"
FAKE_TAINT = "kubetrain.io/fake-node"
FAKE_NODES = {
    "fake-a100-0": "NVIDIA-A100-SXM4-80GB",
    "fake-h100-0": "NVIDIA-H100-80GB-HBM3",
}


def apply_crds(cluster: ControlPlane) -> None:
    """The cluster-scoped manifests a user applies without Helm: the CRD, the trainer policy."""
    subprocess.run(
        [find_binary("kubectl"), "--kubeconfig", cluster.kubeconfig, "apply",
         "-f", ROOT / "crds", "-f", ROOT / "config" / "trainer-policy.yaml"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [
            find_binary("kubectl"),
            "--kubeconfig",
            cluster.kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/trainingjobs.kubetrain.io",
        ],
        check=True,
        capture_output=True,
    )


def _node_status(product: str) -> dict[str, Any]:
    # No kubelet ends graceful deletions here, so Pods of finished tests stay Terminating
    # and keep their requests: the capacity is large enough for a whole session. The H100
    # node keeps 8 GPUs, so a 16-GPU worker stays unschedulable.
    gpus = "8" if "H100" in product else "1000"
    capacity = {"cpu": "4000", "memory": "64Ti", "pods": "5000", "nvidia.com/gpu": gpus}
    now = datetime.now(UTC).isoformat()
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "TestHeartbeat",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ],
    }


class FakeNodes:
    """GPU-labelled Node objects kept Ready by a heartbeat thread (no kubelet behind them)."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        for name, product in FAKE_NODES.items():
            labels = {
                POOL_LABEL: "fake",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": "8",
                "kubernetes.io/hostname": name,
            }
            # Tainted: Pods the test operator does not place here (e2e, node agent tests)
            # must not land on a node no kubelet runs.
            taint = client.V1Taint(key=FAKE_TAINT, value="true", effect="NoSchedule")
            with contextlib.suppress(ApiException):
                self.core.create_node(
                    client.V1Node(
                        metadata=client.V1ObjectMeta(name=name, labels=labels),
                        spec=client.V1NodeSpec(taints=[taint]),
                    )
                )
            self.core.patch_node_status(name, {"status": _node_status(product)})
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(4):  # the local control plane's node-monitor grace is 20 s
            for name, product in FAKE_NODES.items():
                with contextlib.suppress(Exception):
                    self.core.patch_node_status(name, {"status": _node_status(product)})

    def stop(self) -> None:
        self._stop.set()
        for name in FAKE_NODES:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)


WAITING_GRACE_SECONDS = 6
"""The test operator's containerWaitingGraceSeconds (the chart's default is 300)."""


def operator_config(tmp: Path) -> Path:
    """GPU catalogue entries that place test Pods only on the fake nodes."""
    pool = {POOL_LABEL: "fake"}
    fake = {"key": FAKE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
    config = {
        "terminationGracePeriodSeconds": 30,
        "containerWaitingGraceSeconds": WAITING_GRACE_SECONDS,
        "catalogue": {
            "replaceDefaults": True,
            "defaultType": "a100",
            "gpuTypes": {
                "a100": {
                    "products": ["NVIDIA-A100-SXM4-80GB"],
                    "nodeSelector": pool,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        fake,
                    ],
                    "workerCpu": "4",
                    "workerMemory": "16Gi",
                    "pricePerHour": 3.0,
                },
                "h100": {
                    "products": ["NVIDIA-H100-80GB-HBM3"],
                    "nodeSelector": pool,
                    "tolerations": [fake],
                    "workerCpu": "4",
                    "workerMemory": "16Gi",
                    "pricePerHour": 4.5,
                },
                "cpu": {
                    "resourceName": None,
                    "nodeSelector": pool,
                    "tolerations": [fake],
                    "workerCpu": "1",
                    "pricePerHour": 0.1,
                },
            },
        },
    }
    path = tmp / "operator.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def operator_identity(cluster: ControlPlane, core: client.CoreV1Api, tmp: Path) -> Path:
    """A kubeconfig for the ServiceAccount config/rbac makes, bound to its ClusterRole.

    Running the operator under it proves the plain manifests are enough.
    """
    kubectl = [str(find_binary("kubectl")), "--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run(
        [*kubectl, "apply", "-f", str(ROOT / "config" / "rbac")], check=True, capture_output=True
    )
    token = core.create_namespaced_service_account_token(
        "kubetrain-operator",
        "kubetrain-system",
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=86400)
        ),
    ).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    path = tmp / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    return path


class OperatorProcess:
    """``python -m kubetrain`` as a child process, stoppable and restartable by PID."""

    def __init__(self, kubeconfig: Path, config: Path, log: Path, *, channel: bool = True) -> None:
        self.kubeconfig, self.config, self.log = kubeconfig, config, log
        self.process: subprocess.Popen[bytes] | None = None
        # The report channel on loopback, as trainers on the local node reach it.
        self.channel_port = free_ports(1)[0] if channel else None

    def channel_argv(self) -> list[str]:
        if self.channel_port is None:
            return []
        tls = self.log.parent / f"{self.log.stem}-channel-tls"
        return report_channel_flags(tls, self.channel_port)

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubetrain",
            "--kubeconfig",
            str(self.kubeconfig),
            "--config",
            str(self.config),
            "--standalone",
            "--namespace",
            # nop-*: tests that write status themselves; e2e-*, kueue-*: served by the e2e operators
            "!nop-*,!e2e-*,!kueue-*",
            "--metrics-port",
            "0",
            "--liveness",
            "",
            "--status-interval-seconds",
            "1",
            "--resync-seconds",
            "2",
            "--report-interval-seconds",  # tiny jobs last seconds: report often
            "1",
            "--report-channel-interval-seconds",
            "1",
            *self.channel_argv(),
        ]

    def start(self) -> None:
        argv = self.argv()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran with the operator shows the operator's log tail."""
    report = yield
    operator = getattr(item, "funcargs", {}).get("operator")
    if report.failed and isinstance(operator, OperatorProcess):
        report.sections.append(("operator log (tail)", operator.tail(120)))
    return report


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane) -> None:
    apply_crds(cluster)


@pytest.fixture(scope="session")
def priority_classes(cluster: ControlPlane) -> None:
    """The plain manifests a user applies without Helm (config/priorityclasses.yaml)."""
    subprocess.run(
        [find_binary("kubectl"), "--kubeconfig", cluster.kubeconfig, "apply", "-f",
         ROOT / "config" / "priorityclasses.yaml"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="session")
def fake_gpu_nodes(core: client.CoreV1Api) -> Iterator[FakeNodes]:
    nodes = FakeNodes(core)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
def operator(
    cluster: ControlPlane,
    core: client.CoreV1Api,
    crds: None,
    priority_classes: None,
    fake_gpu_nodes: FakeNodes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    tmp = tmp_path_factory.mktemp("operator")
    identity = operator_identity(cluster, core, tmp)
    process = OperatorProcess(identity, operator_config(tmp), tmp / "operator.log")
    process.start()
    yield process
    process.stop()
    if os.environ.get("KUBETRAIN_SHOW_OPERATOR_LOG"):
        print(process.tail(200))


def wait_for(
    probe: Any, what: str, timeout: float = 30.0, operator: OperatorProcess | None = None
) -> Any:
    """``eventually`` that shows the operator's log tail when it times out."""
    try:
        return eventually(probe, timeout=timeout, what=what)
    except AssertionError as err:
        if operator is not None:
            raise AssertionError(f"{err}\n--- operator log ---\n{operator.tail()}") from None
        raise
