"""Pod volumes as local directories, and the bind mounts that put them at mountPaths.

emptyDir, configMap, secret, downwardAPI and projected volumes (service-account tokens
from the TokenRequest API included) are directories under the Pod's sandbox; hostPath
is the host path itself; a persistentVolumeClaim is the directory of the PV it is bound
to. Capacity, ``medium: Memory`` and ``sizeLimit`` are not enforced.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from kubetrain.localcluster.nodeagent.credentials import DEFAULT_LIFETIME, TokenSource
from kubetrain.localcluster.nodeagent.downward import (
    Addresses,
    DownwardError,
    field_value,
    resource_value,
)
from kubetrain.localcluster.nodeagent.files import safe_relative, sync_tree
from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj
from kubetrain.localcluster.nodeagent.runtime import Mount

DEFAULT_MODE = 0o644
# Mount targets that would make the host unusable inside the container.
_FORBIDDEN_TARGETS = {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc"}
_FORBIDDEN_TARGETS |= {"/run", "/sbin", "/sys", "/usr", "/var"}
_FORBIDDEN_PREFIXES = ("/proc/", "/sys/")

Files = dict[str, tuple[bytes, int]]


class VolumeError(Exception):
    """A volume cannot be set up (yet): the Pod waits in ContainerCreating and retries."""


def fetch_data(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, bytes] | None:
    """The data of a ConfigMap or Secret as bytes, or None when it does not exist."""
    plural = "configmaps" if kind == "ConfigMap" else "secrets"
    try:
        obj = kube.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
    except ApiError as err:
        if err.not_found:
            return None
        raise
    if kind == "ConfigMap":
        data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        binary = obj.get("binaryData") or {}
    else:
        data, binary = {}, obj.get("data") or {}
    data.update({k: base64.b64decode(v) for k, v in binary.items()})
    return data


class Volumes:
    """Materializes a Pod's volumes; ``prepare`` is repeatable (it refreshes content)."""

    def __init__(
        self,
        kube: Kube,
        volume_dir: Callable[[str, str], Path],
        node_allocatable: Callable[[str], Mapping[str, str]],
    ) -> None:
        self.kube = kube
        self.volume_dir = volume_dir
        self.node_allocatable = node_allocatable
        self.tokens = TokenSource(kube)

    def prepare(self, pod: Obj, addresses: Addresses) -> dict[str, tuple[str, bool]]:
        """Set up every volume; returns name -> (host path, read-only)."""
        prepared = {}
        for volume in pod["spec"].get("volumes") or []:
            try:
                prepared[volume["name"]] = self._prepare(pod, volume, addresses)
            except (ApiError, DownwardError, ValueError, OSError) as err:
                raise VolumeError(f"volume {volume['name']!r}: {err}") from err
        return prepared

    def forget(self, uid: str) -> None:
        self.tokens.forget(uid)

    def _prepare(self, pod: Obj, volume: Obj, addresses: Addresses) -> tuple[str, bool]:
        uid = pod["metadata"]["uid"]
        directory = self.volume_dir(uid, volume["name"])
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            return str(directory), False
        if "hostPath" in volume:
            return _host_path(volume["hostPath"]), False
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            return self._claim(pod, claim["claimName"]), bool(claim.get("readOnly", False))
        if "ephemeral" in volume:
            return self._claim(pod, f"{pod['metadata']['name']}-{volume['name']}"), False
        files = self._files(pod, volume, addresses)
        if files is None:
            raise VolumeError(f"volume type {sorted(set(volume) - {'name'})} is not supported")
        sync_tree(directory, files)
        return str(directory), True  # configMap, secret, downwardAPI, projected: read-only

    def _files(self, pod: Obj, volume: Obj, addresses: Addresses) -> Files | None:
        namespace = pod["metadata"]["namespace"]
        for kind, key, name_key in (
            ("ConfigMap", "configMap", "name"),
            ("Secret", "secret", "secretName"),
        ):
            if key in volume:
                source = volume[key]
                mode = int(source.get("defaultMode", DEFAULT_MODE))
                return self._keys(namespace, kind, source, source[name_key], mode)
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            mode = int(source.get("defaultMode", DEFAULT_MODE))
            return self._downward(pod, source.get("items") or [], mode, addresses)
        if "projected" in volume:
            return self._projected(pod, volume["projected"], addresses)
        return None

    def _keys(self, namespace: str, kind: str, source: Obj, name: str, default_mode: int) -> Files:
        """Files for a configMap or secret source: every key, or the listed items."""
        optional = bool(source.get("optional", False))
        data = fetch_data(self.kube, namespace, kind, name)
        if data is None:
            if optional:
                return {}
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        items = source.get("items")
        if not items:
            return {key: (value, default_mode) for key, value in data.items()}
        files: Files = {}
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise VolumeError(f"{kind} {namespace}/{name} has no key {item['key']!r}")
            files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
        return files

    def _downward(
        self, pod: Obj, items: list[Obj], default_mode: int, addresses: Addresses
    ) -> Files:
        files: Files = {}
        node = pod["spec"].get("nodeName", "")
        for item in items:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"], addresses, volume=True)
            else:
                value = resource_value(pod, item["resourceFieldRef"], self.node_allocatable(node))
            files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
        return files

    def _projected(self, pod: Obj, projected: Obj, addresses: Addresses) -> Files:
        namespace = pod["metadata"]["namespace"]
        mode = int(projected.get("defaultMode", DEFAULT_MODE))
        files: Files = {}
        for source in projected.get("sources") or []:
            if "configMap" in source:
                cm = source["configMap"]
                files.update(self._keys(namespace, "ConfigMap", cm, cm["name"], mode))
            elif "secret" in source:
                secret = source["secret"]
                files.update(self._keys(namespace, "Secret", secret, secret["name"], mode))
            elif "downwardAPI" in source:
                items = source["downwardAPI"].get("items") or []
                files.update(self._downward(pod, items, mode, addresses))
            elif "serviceAccountToken" in source:
                request = source["serviceAccountToken"]
                token = self.tokens.token(
                    pod,
                    audience=str(request.get("audience", "")),
                    lifetime=int(request.get("expirationSeconds", DEFAULT_LIFETIME)),
                )
                files[request["path"]] = (token, mode)
            else:
                raise VolumeError(f"projected source {sorted(source)} is not supported")
        return files

    def _claim(self, pod: Obj, claim_name: str) -> str:
        """The host directory of the PV a claim is bound to."""
        namespace = pod["metadata"]["namespace"]
        try:
            claim = self.kube.get(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}"
            )
        except ApiError as err:
            if err.not_found:
                raise VolumeError(f'persistentvolumeclaim "{claim_name}" not found') from err
            raise
        volume_name = claim.get("spec", {}).get("volumeName")
        if not volume_name or claim.get("status", {}).get("phase") != "Bound":
            raise VolumeError(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        volume = self.kube.get(f"/api/v1/persistentvolumes/{volume_name}")
        spec = volume.get("spec", {})
        if "hostPath" in spec:
            return _host_path(spec["hostPath"])
        if "local" in spec:
            return str(spec["local"]["path"])
        raise VolumeError(f"persistentvolume {volume_name} is neither hostPath nor local")


def _host_path(source: Obj) -> str:
    path = Path(source["path"])
    kind = source.get("type", "")
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise VolumeError(f"hostPath {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise VolumeError(f"hostPath {path} is not a file")
    return str(path)


def check_target(target: str) -> str:
    """A mountPath the agent is willing to mount over (absolute, not a system directory)."""
    pure = PurePosixPath(target)
    normal = str(PurePosixPath("/", *[p for p in pure.parts[1:] if p not in ("", ".")]))
    if not pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"mountPath {target!r} must be an absolute path without '..'")
    if normal in _FORBIDDEN_TARGETS or normal.startswith(_FORBIDDEN_PREFIXES):
        raise ValueError(f"mountPath {target!r} would hide a system directory of the host")
    return normal


def container_mounts(
    container: Obj,
    volumes: Mapping[str, tuple[str, bool]],
    expand: Callable[[str], str],
) -> list[Mount]:
    """The bind mounts for a container's ``volumeMounts`` (subPath and subPathExpr too)."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ValueError(f"volumeMount {mount['name']!r} names no volume of the Pod")
        source, read_only = volumes[mount["name"]]
        sub_path = mount.get("subPath") or (
            expand(mount["subPathExpr"]) if mount.get("subPathExpr") else ""
        )
        if sub_path:
            sub = Path(source) / safe_relative(sub_path)
            if not sub.exists():
                sub.mkdir(parents=True)
            source = str(sub)
        mounts.append(
            Mount(
                source=source,
                target=check_target(mount["mountPath"]),
                readOnly=read_only or bool(mount.get("readOnly", False)),
            )
        )
    return mounts
