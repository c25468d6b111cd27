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
