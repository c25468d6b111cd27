"""End to end on the local cluster: the node agent runs the real trainers, the real operator
(default GPU catalogue) serves the e2e-* namespaces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.nodeagent import NodeAgent
from kubetrain.localcluster.ports import free_ports
from tests.conftest import _fresh_namespace
from tests.integration.operator_fixtures import OperatorProcess, operator_identity


class E2EOperator(OperatorProcess):
    """The operator with its built-in GPU catalogue, serving only e2e-* namespaces."""

    metrics_port = free_ports(1)[0]
    """Where Prometheus scrapes it (on loopback)."""

    def start(self) -> None:
        # A worker on a node that stopped reporting is lost 5 s after the node is NotReady.
        os.environ["KUBETRAIN_LOST_NODE_GRACE_SECONDS"] = "5"
        os.environ["KUBETRAIN_METRICS_ADDRESS"] = "127.0.0.1"
        try:
            super().start()
        finally:
            del os.environ["KUBETRAIN_LOST_NODE_GRACE_SECONDS"]
            del os.environ["KUBETRAIN_METRICS_ADDRESS"]

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--config")
        del argv[at : at + 2]
        at = argv.index("--namespace")
        argv[at + 1] = "e2e-*"
        at = argv.index("--metrics-port")
        argv[at + 1] = str(self.metrics_port)
        return argv


@pytest.fixture(scope="session")
def e2e_operator(
    cluster: ControlPlane,
    core: client.CoreV1Api,
    crds: None,
    priority_classes: None,
    node_agent: NodeAgent,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    tmp = tmp_path_factory.mktemp("e2e-operator")
    process = E2EOperator(
        operator_identity(cluster, core, tmp), Path("unused"), tmp / "operator.log"
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def e2e_namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _fresh_namespace(core, request, "e2e-")
    yield name
    core.delete_namespace(name)


def directory_claim(core: client.CoreV1Api, namespace: str, name: str, root: Path) -> str:
    """A ReadWriteMany claim ``name`` in ``namespace`` bound to the local directory ``root``
    (a hostPath PV, as a dataset or cache volume a platform provides); returns the PV's
    name, for the caller to delete."""
    volume = f"{name}-{namespace}"[:63]
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=volume),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"}, access_modes=["ReadWriteMany"],
                storage_class_name="manual",
                host_path=client.V1HostPathVolumeSource(path=str(root)),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=name),
            ),
        )
    )  # fmt: skip
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], storage_class_name="manual",
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )  # fmt: skip
    return volume
