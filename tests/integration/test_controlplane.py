"""The local control plane is a real one: API server, controllers, GC and scheduler all work."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.localcluster import ControlPlane, find_binary
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


def _pinned(name: str) -> str:
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in hack/versions.env")


def _gone(read: object) -> bool:
    try:
        read()  # type: ignore[operator]
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def test_readyz_and_kubectl_report_the_pinned_release(cluster: ControlPlane) -> None:
    kubectl = find_binary("kubectl")
    readyz = subprocess.run(
        [kubectl, "--kubeconfig", cluster.kubeconfig, "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert readyz.stdout.strip() == "ok"

    out = subprocess.run(
        [kubectl, "--kubeconfig", cluster.kubeconfig, "version", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    versions = json.loads(out.stdout)
    release = _pinned("K8S_VERSION")
    assert versions["clientVersion"]["gitVersion"] == release
    assert versions["serverVersion"]["gitVersion"] == release
    assert versions["serverVersion"]["minor"] == release.split(".")[1]


def test_namespace_deletion_is_finished_by_the_controller_manager(
    core: client.CoreV1Api,
) -> None:
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"), data={"a": "b"})
    )
    # The service-account controller populates every new namespace.
    eventually(lambda: core.list_namespaced_service_account(name).items, what="default SA")

    core.delete_namespace(name)
    assert core.read_namespace(name).status.phase == "Terminating"
    eventually(lambda: _gone(lambda: core.read_namespace(name)), timeout=60, what="namespace gone")


def test_a_deployment_gets_a_replicaset_and_pods(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="example/web:1")]
                    ),
                ),
            ),
        ),
    )
    replicasets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace).items, what="a ReplicaSet"
    )
    assert replicasets[0].metadata.owner_references[0].name == "web"

    def two_pods() -> list[client.V1Pod] | None:
        pods: list[client.V1Pod] = core.list_namespaced_pod(namespace).items
        return pods if len(pods) == 2 else None

    pods = eventually(two_pods, what="two Pods from the ReplicaSet")
    assert {p.metadata.owner_references[0].kind for p in pods} == {"ReplicaSet"}


def test_owned_objects_are_garbage_collected(core: client.CoreV1Api, namespace: str) -> None:
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="child", owner_references=[reference])
        ),
    )
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
    )

    core.delete_namespaced_config_map("owner", namespace)
    eventually(
        lambda: _gone(lambda: core.read_namespaced_config_map("child", namespace)),
        timeout=60,
        what="the owned ConfigMap to be collected",
    )
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


@pytest.fixture
def ready_node(core: client.CoreV1Api) -> Iterator[str]:
    name = f"test-node-{uuid.uuid4().hex[:6]}"
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "10"}
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels={"kubetrain.io/test-node": name}),
        )
    )
    core.patch_node_status(
        name,
        {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Test"}],
            }
        },
    )
    yield name
    core.delete_node(name)


def test_the_scheduler_binds_a_pod_to_a_matching_node(
    core: client.CoreV1Api, namespace: str, ready_node: str
) -> None:
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="placed"),
            spec=client.V1PodSpec(
                node_selector={"kubetrain.io/test-node": ready_node},
                # The node has no node agent behind it: tolerate the taints the node
                # lifecycle controller may add to a node without heartbeats.
                tolerations=[client.V1Toleration(operator="Exists")],
                containers=[client.V1Container(name="main", image="example/main:1")],
            ),
        ),
    )
    bound = eventually(
        lambda: core.read_namespaced_pod("placed", namespace).spec.node_name,
        what="the Pod to be bound",
    )
    assert bound == ready_node
    scheduled = eventually(
        lambda: [
            c
            for c in core.read_namespaced_pod("placed", namespace).status.conditions or []
            if c.type == "PodScheduled" and c.status == "True"
        ],
        what="PodScheduled=True",
    )
    assert scheduled
