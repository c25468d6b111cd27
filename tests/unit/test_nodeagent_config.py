"""Node pools, the objects the agent writes (Node, Lease, PV), and its file helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetrain.localcluster.nodeagent.config import AGENT_LABEL, default_pool, load_pool
from kubetrain.localcluster.nodeagent.files import sync_tree
from kubetrain.localcluster.nodeagent.kube import Kube
from kubetrain.localcluster.nodeagent.nodes import lease_object, node_object, node_status
from kubetrain.localcluster.nodeagent.provisioner import persistent_volume, storage_class
from kubetrain.localcluster.nodeagent.volumes import check_target


def test_the_default_pool_looks_like_a_gpu_node_pool() -> None:
    pool = {node.name: node for node in default_pool()}
    assert set(pool) == {"gpu-a100-0", "gpu-h100-0", "cpu-0"}
    a100, h100, cpu = pool["gpu-a100-0"], pool["gpu-h100-0"], pool["cpu-0"]
    assert a100.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert h100.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    for gpu in (a100, h100):
        assert gpu.labels["nvidia.com/gpu.count"] == "8"
        assert gpu.capacity["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in cpu.capacity
    assert all(int(node.capacity["pods"]) >= 100 for node in pool.values())


def test_a_pool_file_expands_counts(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(
        "nodes:\n"
        "  - name: l4\n"
        "    count: 2\n"
        "    labels: {nvidia.com/gpu.product: NVIDIA-L4}\n"
        "    taints: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}]\n"
        "    capacity: {cpu: 8, memory: 32Gi, nvidia.com/gpu: 1}\n"
        "  - name: cpu\n"
    )
    nodes = load_pool(path)
    assert [n.name for n in nodes] == ["l4-0", "l4-1", "cpu"]
    assert nodes[0].capacity == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    node = node_object(nodes[0], "agent-a")
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "l4-0" and labels[AGENT_LABEL] == "agent-a"


def test_a_pool_file_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("nodes: [{name: a, gpus: 8}]\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_pool(path)


def test_node_status_and_lease_say_ready() -> None:
    node = default_pool()[1]
    status = node_status(node, now=2_000.0, ready_since=1_000.0, version="v1.36.3", boot_id="b")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert ready["lastTransitionTime"] == "1970-01-01T00:16:40Z"
    assert ready["lastHeartbeatTime"] == "1970-01-01T00:33:20Z"
    assert status["allocatable"]["nvidia.com/gpu"] == "8"
    assert status["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert status["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    lease = lease_object("gpu-h100-0", "uid-1", 2_000.5)
    assert lease["spec"]["renewTime"] == "1970-01-01T00:33:20.500000Z"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_the_storage_class_is_the_default_and_waits_for_a_consumer() -> None:
    sc = storage_class()
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete"


def test_a_provisioned_volume_is_pre_bound_and_reachable_from_the_agents_nodes() -> None:
    claim = {
        "metadata": {"name": "ckpt", "namespace": "ns", "uid": "u-1"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    pv = persistent_volume(claim, storage_class(), Path("/state/volumes/pvc-u-1"), "agent-a")
    assert pv["metadata"]["name"] == "pvc-u-1"
    spec = pv["spec"]
    assert spec["claimRef"]["uid"] == "u-1" and spec["capacity"] == {"storage": "5Gi"}
    assert spec["hostPath"]["path"] == "/state/volumes/pvc-u-1"
    term = spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": AGENT_LABEL, "operator": "In", "values": ["agent-a"]}


@pytest.mark.parametrize("target", ["/", "/etc", "/proc/self", "/usr", "relative", "/a/../etc"])
def test_system_directories_are_not_mount_targets(target: str) -> None:
    with pytest.raises(ValueError, match="mountPath"):
        check_target(target)


@pytest.mark.parametrize("target", ["/checkpoints", "/dev/shm", "/var/run/secrets/x", "/tmp/"])
def test_ordinary_mount_targets_are_accepted(target: str) -> None:
    assert check_target(target) == target.rstrip("/")


def test_sync_tree_writes_modes_and_removes_vanished_keys(tmp_path: Path) -> None:
    assert sync_tree(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    assert (tmp_path / "dir" / "b").stat().st_mode & 0o777 == 0o600
    assert not sync_tree(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    assert sync_tree(tmp_path, {"a": (b"changed", 0o644)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(ValueError, match="invalid volume item path"):
        sync_tree(tmp_path, {"../escape": (b"", 0o644)})


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_client_sends_a_kubeconfig_token_and_only_accepts_a_loopback_server(
    tmp_path: Path,
) -> None:
    kube = Kube(_kubeconfig(tmp_path / "local", "https://127.0.0.1:6443"))
    assert kube.host_port == ("127.0.0.1", 6443)
    assert kube._headers["Authorization"] == "Bearer t0ken"
    remote = Kube(_kubeconfig(tmp_path / "remote", "https://192.0.2.10:6443"))
    with pytest.raises(ValueError, match="loopback"):
        _ = remote.host_port
