"""What the operator has seen through its watches: TrainingJobs, their Pods and other children.

A deleted object leaves a tombstone: the resourceVersion it was deleted at, kept for
``TOMBSTONE_SECONDS``. A body no newer than that (the response of a write sent before the
deletion, a watch event that lags it) is refused, so nothing comes back from the dead; an
object created again under the same name is newer and taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubetrain.operator.reports import report_write_entries

JSON = dict[str, Any]
Key = tuple[str, str]
Ident = tuple[str, str, str]  # kind, namespace, name

TOMBSTONE_SECONDS = 300.0
"""How long a deletion is remembered: far longer than a write's timeout, the longest a
response can arrive after the deletion it raced."""


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
    trainer's env and volumes, rendered by the operator itself) is left out, and of the
    managedFields only the entries that date the progress report."""
    meta = dict(_lean(body)["metadata"])
    written = report_write_entries((body.get("metadata") or {}).get("managedFields"))
    if written:
        meta["managedFields"] = written
    node = (body.get("spec") or {}).get("nodeName")
    return {
        "apiVersion": body.get("apiVersion", "v1"),
        "kind": body.get("kind", "Pod"),
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": body.get("status") or {},
    }


class Cache:
    """Latest bodies by key, fed by watch events and write responses; safe to read from
    worker threads."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        tombstone_seconds: float = TOMBSTONE_SECONDS,
    ) -> None:
        self._clock, self.tombstone_seconds = clock, tombstone_seconds
        self._lock = threading.Lock()
        self._jobs: dict[Key, JSON] = {}
        self._pods: dict[Key, dict[str, JSON]] = {}
        self._pod_jobs: dict[Key, Key] = {}  # (namespace, Pod name) -> job
        self._children: dict[Key, dict[tuple[str, str], JSON]] = {}  # (kind, name) -> body
        self._shared: dict[tuple[str, str, str], JSON] = {}  # (namespace, kind, name) -> body
        self._tombstones: dict[Ident, tuple[int, float]] = {}  # -> deleted at version, when

    def put_job(self, body: JSON) -> Key:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        body = _lean(body)
        with self._lock:
            if not self._buried(("TrainingJob", *key), body):
                self._jobs[key] = self._newer(self._jobs.get(key), body)
        return key

    def knows_job(self, body: JSON) -> bool:
        """Whether the cache holds this job at ``body``'s resourceVersion or a newer one:
        e.g. the watch's echo of the operator's own status write, already put here by it."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        version = resource_version(body)
        with self._lock:
            held = self._jobs.get(key)
        return held is not None and version >= 0 and resource_version(held) >= version

    def drop_job(self, key: Key, version: int | None = None) -> None:
        """Forget a deleted job; ``version``: the resourceVersion it was deleted at (by
        default the latest seen)."""
        with self._lock:
            self._bury(("TrainingJob", *key), self._jobs.pop(key, None), version)

    def job(self, key: Key) -> JSON | None:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> list[JSON]:
        with self._lock:
            return list(self._jobs.values())

    def put_pod(self, job: Key, body: JSON) -> None:
        name, body = body["metadata"]["name"], lean_pod(body)
        with self._lock:
            if self._buried(("Pod", job[0], name), body):
                return
            pods = self._pods.setdefault(job, {})
            pods[name] = self._newer(pods.get(name), body)
            self._pod_jobs[(job[0], name)] = job

    def drop_pod(self, job: Key, name: str, version: int | None = None) -> None:
        with self._lock:
            pods = self._pods.get(job, {})
            self._bury(("Pod", job[0], name), pods.pop(name, None), version)
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
        """A claim, Service or Workload labelled with ``job``."""
        name, body = (body["kind"], body["metadata"]["name"]), _lean(body)
        with self._lock:
            if self._buried((name[0], job[0], name[1]), body):
                return
            children = self._children.setdefault(job, {})
            children[name] = self._newer(children.get(name), body)

    def drop_child(self, job: Key, kind: str, name: str, version: int | None = None) -> None:
        with self._lock:
            children = self._children.get(job, {})
            self._bury((kind, job[0], name), children.pop((kind, name), None), version)
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
            if not self._buried((key[1], key[0], key[2]), body):
                self._shared[key] = self._newer(self._shared.get(key), body)

    def drop_shared(self, namespace: str, kind: str, name: str, version: int | None = None) -> None:
        with self._lock:
            gone = self._shared.pop((namespace, kind, name), None)
            self._bury((kind, namespace, name), gone, version)

    def shared(self, namespace: str, kind: str, name: str) -> JSON | None:
        with self._lock:
            return self._shared.get((namespace, kind, name))

    def counts(self) -> dict[str, int]:
        """How many entries each of the cache's maps holds (nothing stays of a deleted job
        but its tombstones, and those only for ``tombstone_seconds``)."""
        with self._lock:
            self._sweep()
            return {
                "jobs": len(self._jobs),
                "pods": sum(len(p) for p in self._pods.values()),
                "podJobs": len(self._pod_jobs),
                "jobsWithPods": len(self._pods),
                "children": sum(len(c) for c in self._children.values()),
                "jobsWithChildren": len(self._children),
                "shared": len(self._shared),
                "tombstones": len(self._tombstones),
            }

    def _bury(self, ident: Ident, last: JSON | None, version: int | None) -> None:
        """Record a deletion at ``version``, or else at the last version seen (the lock held)."""
        self._sweep()
        at = version if version is not None and version >= 0 else -1
        if last is not None:
            at = max(at, resource_version(last))
        old = self._tombstones.pop(ident, None)  # re-inserted last: the map is in time order
        if old is not None:
            at = max(at, old[0])
        if at >= 0:  # else nothing is known to refuse
            self._tombstones[ident] = (at, self._clock())

    def _buried(self, ident: Ident, body: JSON) -> bool:
        """Whether ``body`` is no newer than the deletion of its object (the lock held)."""
        self._sweep()
        found = self._tombstones.get(ident)
        if found is None:
            return False
        if resource_version(body) > found[0]:  # created again since
            del self._tombstones[ident]
            return False
        return True

    def _sweep(self) -> None:
        """Forget deletions older than ``tombstone_seconds`` (the lock held)."""
        horizon = self._clock() - self.tombstone_seconds
        while self._tombstones:
            ident, (_, at) = next(iter(self._tombstones.items()))
            if at > horizon:
                return
            del self._tombstones[ident]

    @staticmethod
    def _newer(old: JSON | None, new: JSON) -> JSON:
        """Keep whichever body is newer: a write's response may arrive before its watch event."""
        if old is not None and resource_version(old) > resource_version(new):
            return old
        return new
