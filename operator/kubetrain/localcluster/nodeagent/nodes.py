"""Node registration and heartbeats: Node objects kept Ready and Leases kept renewed.

The node lifecycle controller marks a node NotReady (and taints it) when neither its
Lease in ``kube-node-lease`` nor its Ready condition has been renewed for the grace
period (40 s by default); the agent renews the Lease every 10 s, as a kubelet does,
and reposts the node status every minute.
"""

from __future__ import annotations

import logging
import platform
import uuid
from collections.abc import Sequence
from typing import Any

from kubetrain.localcluster.nodeagent.config import NodeSpec
from kubetrain.localcluster.nodeagent.kube import STRATEGIC_PATCH, ApiError, Kube, Obj
from kubetrain.localcluster.nodeagent.timeutil import micro_time, parse_time, rfc3339

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 4.0  # the local control plane's node-monitor grace is 20 s
STATUS_SECONDS = 60.0
HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"

_PRESSURE = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "no memory pressure"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "sufficient PIDs"),
)


def node_object(spec: NodeSpec, agent: str) -> Obj:
    """The Node as first registered (status follows in a separate write)."""
    node: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": spec.all_labels(agent)},
    }
    if spec.taints:
        node["spec"] = {"taints": [dict(t) for t in spec.taints]}
    return node


def node_status(
    spec: NodeSpec,
    *,
    now: float,
    ready_since: float,
    version: str,
    boot_id: str,
    kubelet_port: int = 0,
) -> Obj:
    """The status a healthy kubelet would post for ``spec`` at ``now``."""
    heartbeat, since = rfc3339(now), rfc3339(ready_since)
    conditions: list[Obj] = [
        {
            "type": kind,
            "status": "False",
            "reason": reason,
            "message": f"kubetrain node agent: {message}",
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }
        for kind, reason, message in _PRESSURE
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubetrain node agent is posting ready status",
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }
    )
    return {
        "capacity": dict(spec.capacity),
        "allocatable": dict(spec.allocatable if spec.allocatable is not None else spec.capacity),
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": HOST_IP}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, spec.name).hex,
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, spec.name)),
            "bootID": boot_id,
            "kernelVersion": platform.release(),
            "osImage": "kubetrain local node",
            "containerRuntimeVersion": "kubetrain-nodeagent://0.1.0",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": spec.all_labels("")["kubernetes.io/arch"],
        },
    }


def lease_object(node: str, node_uid: str, now: float) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(now),
        },
    }


class NodeHeartbeat:
    """Registers the agent's nodes and keeps them Ready; ``beat`` is called periodically."""

    def __init__(
        self, kube: Kube, specs: Sequence[NodeSpec], agent: str, kubelet_port: int = 0
    ) -> None:
        self.kube = kube
        self.kubelet_port = kubelet_port
        self.specs = list(specs)
        self.agent = agent
        self.boot_id = str(uuid.uuid4())
        self._uids: dict[str, str] = {}
        self._ready_since: dict[str, float] = {}
        self._version = ""
        self._last_status = 0.0
        self._last_lease = 0.0
        self.silent: set[str] = set()  # nodes whose heartbeat stopped (a lost node)

    def register(self, now: float) -> None:
        """Create (or relabel) every node, post its status and renew its Lease."""
        self._version = str(self.kube.get("/version").get("gitVersion", "v0.0.0"))
        for spec in self.specs:
            self._register(spec, now)
        self.beat(now, force=True)

    def beat(self, now: float, *, force: bool = False) -> None:
        beating = [spec for spec in self.specs if spec.name not in self.silent]
        if force or now - self._last_status >= STATUS_SECONDS:
            for spec in beating:
                self._post_status(spec, now)
            self._last_status = now
        if force or now - self._last_lease >= LEASE_RENEW_SECONDS:
            for spec in beating:
                self._renew_lease(spec.name, now)
            self._last_lease = now

    def _register(self, spec: NodeSpec, now: float) -> None:
        path = f"/api/v1/nodes/{spec.name}"
        try:
            node = self.kube.create("/api/v1/nodes", node_object(spec, self.agent))
        except ApiError as err:
            if not err.conflict:
                raise
            node = self.kube.patch(path, {"metadata": {"labels": spec.all_labels(self.agent)}})
        self._uids[spec.name] = node["metadata"]["uid"]
        self._ready_since[spec.name] = _ready_since(node) or now

    def _post_status(self, spec: NodeSpec, now: float) -> None:
        status = node_status(
            spec,
            now=now,
            ready_since=self._ready_since[spec.name],
            version=self._version,
            boot_id=self.boot_id,
            kubelet_port=self.kubelet_port,
        )
        try:
            self.kube.patch(
                f"/api/v1/nodes/{spec.name}/status", {"status": status}, STRATEGIC_PATCH
            )
        except ApiError as err:
            if not err.not_found:
                raise
            log.warning("node %s was deleted: registering it again", spec.name)
            self._register(spec, now)
            self.kube.patch(
                f"/api/v1/nodes/{spec.name}/status", {"status": status}, STRATEGIC_PATCH
            )

    def _renew_lease(self, node: str, now: float) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        try:
            self.kube.patch(f"{path}/{node}", {"spec": {"renewTime": micro_time(now)}})
        except ApiError as err:
            if not err.not_found:
                raise
            self.kube.create(path, lease_object(node, self._uids[node], now))


def _ready_since(node: Obj) -> float | None:
    """When an existing node last turned Ready, so a restart keeps its transition time."""
    conditions: list[dict[str, Any]] = node.get("status", {}).get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return parse_time(str(condition["lastTransitionTime"]))
    return None
