"""Local PersistentVolumes: the ``kubetrain-local`` StorageClass and its provisioner.

A claim of that class is bound to a hostPath PV backed by a directory in the agent's
state directory. With WaitForFirstConsumer (the class's mode) the scheduler picks a
node first and names it in the claim's ``volume.kubernetes.io/selected-node``
annotation; the agent provisions only for its own nodes. The PV's node affinity allows
every node of the same agent (they share one disk), so a Pod that resumes on another of
them still finds its data. Released volumes with reclaim policy Delete lose their data.
Capacity is recorded, not enforced.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection
from pathlib import Path

from kubetrain.localcluster.nodeagent.config import AGENT_LABEL
from kubetrain.localcluster.nodeagent.events import Events
from kubetrain.localcluster.nodeagent.informer import Informer
from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj

log = logging.getLogger(__name__)

PROVISIONER = "kubetrain.io/local"
STORAGE_CLASS = "kubetrain-local"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
LOCAL_PATH = "kubetrain.io/local-path"


def storage_class() -> Obj:
    """The local cluster's default StorageClass."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def ensure_storage_class(kube: Kube) -> None:
    try:
        kube.create("/apis/storage.k8s.io/v1/storageclasses", storage_class())
    except ApiError as err:
        if not err.conflict:
            raise


def persistent_volume(claim: Obj, storage: Obj, path: Path, agent: str) -> Obj:
    """The PV that satisfies ``claim``: pre-bound to it, backed by ``path``."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {PROVISIONED_BY: PROVISIONER, LOCAL_PATH: str(path)},
            "labels": {AGENT_LABEL: agent},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": storage.get("reclaimPolicy", "Delete"),
            "storageClassName": storage["metadata"]["name"],
            "volumeMode": "Filesystem",
            "mountOptions": storage.get("mountOptions") or [],
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": AGENT_LABEL, "operator": "In", "values": [agent]}
                            ]
                        }
                    ]
                }
            },
        },
    }


class Provisioner:
    """Provisions claims of local classes for the agent's nodes and reclaims released PVs."""

    def __init__(
        self,
        kube: Kube,
        *,
        root: Path,
        agent: str,
        nodes: Collection[str],
        claims: Informer,
        volumes: Informer,
        events: Events,
    ) -> None:
        self.kube = kube
        self.root = root
        self.agent = agent
        self.nodes = set(nodes)
        self.claims = claims
        self.volumes = volumes
        self.events = events
        self._classes: dict[str, Obj | None] = {}

    def sync(self) -> None:
        for claim in self.claims.snapshot():
            try:
                self._provision(claim)
            except (ApiError, OSError) as err:
                log.warning("provisioning %s: %s", claim["metadata"]["name"], err)
        for volume in self.volumes.snapshot():
            try:
                self._reclaim(volume)
            except (ApiError, OSError) as err:
                log.warning("reclaiming %s: %s", volume["metadata"]["name"], err)

    def _storage_class(self, name: str) -> Obj | None:
        if name not in self._classes:
            try:
                self._classes[name] = self.kube.get(
                    f"/apis/storage.k8s.io/v1/storageclasses/{name}"
                )
            except ApiError as err:
                if not err.not_found:
                    raise
                return None
        return self._classes[name]

    def _provision(self, claim: Obj) -> None:
        meta, spec = claim["metadata"], claim["spec"]
        if (
            spec.get("volumeName")
            or meta.get("deletionTimestamp")
            or not spec.get("storageClassName")
        ):
            return
        storage = self._storage_class(spec["storageClassName"])
        if storage is None or storage.get("provisioner") != PROVISIONER:
            return
        if storage.get("volumeBindingMode") == "WaitForFirstConsumer":
            selected = (meta.get("annotations") or {}).get(SELECTED_NODE)
            if selected not in self.nodes:
                return
        if spec.get("volumeMode", "Filesystem") != "Filesystem":
            self.events.emit(
                claim,
                "ProvisioningFailed",
                "only volumeMode Filesystem is supported",
                warning=True,
                kind="PersistentVolumeClaim",
            )
            return
        name = f"pvc-{meta['uid']}"
        if self.volumes.get(name) is not None:
            return
        path = self.root / name
        try:
            self.kube.create(
                "/api/v1/persistentvolumes", persistent_volume(claim, storage, path, self.agent)
            )
        except ApiError as err:
            if err.conflict:
                return
            raise
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        self.events.emit(
            claim,
            "ProvisioningSucceeded",
            f"Successfully provisioned volume {name} at {path}",
            kind="PersistentVolumeClaim",
        )

    def _reclaim(self, volume: Obj) -> None:
        """Delete the data and the PV of a released volume whose policy is Delete."""
        meta, spec = volume["metadata"], volume["spec"]
        annotations = meta.get("annotations") or {}
        if annotations.get(PROVISIONED_BY) != PROVISIONER:
            return
        if (volume.get("status") or {}).get("phase") != "Released":
            return
        if spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = Path(annotations.get(LOCAL_PATH, ""))
        if path.parent != self.root or path.name != meta["name"]:
            return  # another agent's volume (or a tampered annotation): not ours to delete
        shutil.rmtree(path, ignore_errors=True)
        try:
            self.kube.delete(f"/api/v1/persistentvolumes/{meta['name']}")
        except ApiError as err:
            if not err.not_found:
                raise
