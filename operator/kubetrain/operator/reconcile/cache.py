"""What the operator has seen through its watches: TrainingJobs, their Pods and other children."""

from __future__ import annotations

import threading
from typing import Any

JSON = dict[str, Any]
Key = tuple[str, str]


def resource_version(obj: JSON) -> int:
    """The object's resourceVersion as a number (etcd revisions grow), -1 if unreadable."""
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return -1


def _lean(body: JSON) -> JSON:
    """``body`` without its managedFields: the operator never reads them, and at thousands
    of objects they are a good part of its memory."""
    meta = body.get("metadata")
    if not meta or "managedFields" not in meta:
        return body
    return dict(body, metadata={k: v for k, v in meta.items() if k != "managedFields"})


def lean_pod(body: JSON) -> JSON:
    """What the operator reads of a worker Pod: its metadata, node and status. The spec (the
    trainer's env and volumes, rendered by the operator itself) is left out."""
    lean = _lean(body)
    node = (body.get("spec") or {}).get("nodeName")
    return {
        "apiVersion": body.get("apiVersion", "v1"),
        "kind": body.get("kind", "Pod"),
        "metadata": lean["metadata"],
        "spec": {"nodeName": node} if node else {},
        "status": body.get("status") or {},
    }


class Cache:
    """Latest bodies by key, fed by watch events; safe to read from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, JSON] = {}
        self._pods: dict[Key, dict[str, JSON]] = {}
        self._pod_jobs: dict[Key, Key] = {}  # (namespace, Pod name) -> job
        self._children: dict[Key, dict[tuple[str, str], JSON]] = {}  # (kind, name) -> body
        self._shared: dict[tuple[str, str, str], JSON] = {}  # (namespace, kind, name) -> body

    def put_job(self, body: JSON) -> Key:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        body = _lean(body)
        with self._lock:
            self._jobs[key] = self._newer(self._jobs.get(key), body)
        return key

    def drop_job(self, key: Key) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def job(self, key: Key) -> JSON | None:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> list[JSON]:
        with self._lock:
            return list(self._jobs.values())

    def put_pod(self, job: Key, body: JSON) -> None:
        name, body = body["metadata"]["name"], lean_pod(body)
        with self._lock:
            pods = self._pods.setdefault(job, {})
            pods[name] = self._newer(pods.get(name), body)
            self._pod_jobs[(job[0], name)] = job

    def drop_pod(self, job: Key, name: str) -> None:
        with self._lock:
            pods = self._pods.get(job, {})
            pods.pop(name, None)
            self._pod_jobs.pop((job[0], name), None)
            if not pods:
                self._pods.pop(job, None)

    def pods(self, job: Key) -> list[JSON]:
        with self._lock:
            return list(self._pods.get(job, {}).values())

    def pod(self, namespace: str, name: str) -> tuple[Key, JSON] | None:
        """The job and body of Pod ``namespace/name``, if it is a known worker."""
        with self._lock:
            job = self._pod_jobs.get((namespace, name))
            body = self._pods.get(job, {}).get(name) if job else None
            return (job, body) if job and body else None

    def put_child(self, job: Key, body: JSON) -> None:
        """A claim, ServiceAccount, Role, RoleBinding or Service labelled with ``job``."""
        name, body = (body["kind"], body["metadata"]["name"]), _lean(body)
        with self._lock:
            children = self._children.setdefault(job, {})
            children[name] = self._newer(children.get(name), body)

    def drop_child(self, job: Key, kind: str, name: str) -> None:
        with self._lock:
            children = self._children.get(job, {})
            children.pop((kind, name), None)
            if not children:
                self._children.pop(job, None)

    def child(self, job: Key, kind: str, name: str) -> JSON | None:
        with self._lock:
            return self._children.get(job, {}).get((kind, name))

    def put_shared(self, body: JSON) -> None:
        """A child of every job of its namespace (the trainer identity)."""
        meta, body = body["metadata"], _lean(body)
        key = (meta["namespace"], body["kind"], meta["name"])
        with self._lock:
            self._shared[key] = self._newer(self._shared.get(key), body)

    def drop_shared(self, namespace: str, kind: str, name: str) -> None:
        with self._lock:
            self._shared.pop((namespace, kind, name), None)

    def shared(self, namespace: str, kind: str, name: str) -> JSON | None:
        with self._lock:
            return self._shared.get((namespace, kind, name))

    @staticmethod
    def _newer(old: JSON | None, new: JSON) -> JSON:
        """Keep whichever body is newer: a write's response may arrive before its watch event."""
        if old is not None and resource_version(old) > resource_version(new):
            return old
        return new
