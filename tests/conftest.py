"""Shared fixtures: one real local control plane per test session, a namespace per test.

Tests under ``tests/integration`` and ``tests/e2e`` are marked ``cluster`` and may use the
``cluster`` fixtures; ``tests/unit`` never starts one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from kubetrain.localcluster import ControlPlane

ROOT = Path(__file__).resolve().parents[1]

# The operator, its CRD, PriorityClasses and fake GPU nodes, for integration and e2e tests.
pytest_plugins = ["tests.integration.operator_fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts[0] in ("integration", "e2e"):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real control plane (etcd, apiserver, controller-manager, scheduler) on loopback."""
    plane = ControlPlane(tmp_path_factory.mktemp("cluster"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def api_client(cluster: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def _fresh_namespace(core: client.CoreV1Api, request: pytest.FixtureRequest, prefix: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"{prefix}{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


QUIET_PREFIX = "nop-"
"""Namespaces named nop-* are never served by the test operator (see operator_fixtures)."""


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = _fresh_namespace(core, request, "")
    yield name
    core.delete_namespace(name)


@pytest.fixture
def quiet_namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace the operator under test ignores: for tests that write status
    themselves and must not race a reconciler."""
    name = _fresh_namespace(core, request, QUIET_PREFIX)
    yield name
    core.delete_namespace(name)


# -- the local node agent (issue 3) -------------------------------------------------------

from kubetrain.localcluster.nodeagent import NodeAgent  # noqa: E402 (this section is appended)


@pytest.fixture(scope="session")
def node_agent(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    """The local node agent with the default pool (an A100 node, an H100 node, a CPU node).

    Pods bound to those nodes run as local processes; their containers are stopped when
    the session ends.
    """
    agent = NodeAgent(cluster.kubeconfig, tmp_path_factory.mktemp("nodeagent"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop(stop_pods=True)


@pytest.fixture(scope="session")
def gpu_nodes(node_agent: NodeAgent) -> dict[str, str]:
    """GPU product label -> the name of the agent's node with that GPU."""
    return {
        node.labels["nvidia.com/gpu.product"]: node.name
        for node in node_agent.nodes
        if "nvidia.com/gpu.product" in node.labels
    }
