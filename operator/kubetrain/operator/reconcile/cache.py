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
        name = body["metadata"]["name"]
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
        name = (body["kind"], body["metadata"]["name"])
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
        meta = body["metadata"]
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
