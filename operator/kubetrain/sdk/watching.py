"""A watch on TrainingJobs that survives expiry, yielding the current jobs at each change.

The project's one list-and-watch loop (``kubetrain.listwatch``) follows the jobs from a
thread of its own: list once, watch from the list's resourceVersion, list again when the
watch expires and every ``resync_seconds``. Consumers see one snapshot after each listing
and after every change, so waiting on a job never polls at a fixed interval.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetrain.api import GROUP, PLURAL, VERSION, TrainingJob
from kubetrain.listwatch import JSON, ClientSource, ListWatch, WatchError
from kubetrain.sdk import build
from kubetrain.sdk.errors import api_errors

Snapshot = dict[str, TrainingJob]
"""Jobs by ``namespace/name``."""

CONNECT_TIMEOUT = 10.0


def key(job: TrainingJob) -> str:
    return f"{job.metadata.namespace}/{job.metadata.name}"


def _transient(err: BaseException) -> bool:
    """Worth another try: the server is busy or away for a moment, not refusing."""
    status = getattr(err, "status", None)
    if isinstance(err, ApiException | WatchError):
        return status is None or status in (429, 500, 502, 503, 504)
    return isinstance(err, HTTPError | OSError)


class JobWatch:
    """Watches the jobs of one namespace (or all), optionally only the one named."""

    def __init__(
        self,
        custom: client.CustomObjectsApi,
        namespace: str | None,
        *,
        name: str | None = None,
        resync_seconds: float = 60.0,
    ) -> None:
        self.custom, self.namespace = custom, namespace
        self.field_selector = f"metadata.name={name}" if name else None
        self.resync_seconds = max(resync_seconds, 1.0)

    def _source(self) -> ClientSource:
        fields, timeout = self.field_selector, CONNECT_TIMEOUT
        if self.namespace is None:
            return ClientSource(
                self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                field_selector=fields, connect_timeout=timeout,
            )  # fmt: skip
        return ClientSource(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
            field_selector=fields, connect_timeout=timeout,
        )  # fmt: skip

    def snapshots(self, deadline: float | None = None) -> Iterator[Snapshot]:
        """The jobs after each listing and after each change, until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value; None watches until the caller stops.
        A refusal (forbidden, not found) or an unreachable server before the first listing
        is raised as a ``KubetrainError``; later transient errors are retried.
        """
        changes: queue.Queue[Snapshot | BaseException] = queue.Queue()
        jobs: Snapshot = {}

        def handle(kind: str, obj: JSON, listing: bool) -> None:
            job = build.parse(obj)
            if kind == "DELETED":
                jobs.pop(key(job), None)
            else:
                jobs[key(job)] = job
            if not listing:
                changes.put(dict(jobs))

        def fatal(err: BaseException) -> bool:
            if loop.synced.is_set() and _transient(err):
                return False
            changes.put(err)
            return True

        loop = ListWatch(
            self._source(),
            handle,
            name="TrainingJobs",
            listed=lambda: changes.put(dict(jobs)),
            fatal=fatal,
            retried=(ApiException, WatchError, HTTPError, OSError, ValueError),
            relist_seconds=self.resync_seconds,
        )
        loop.start()
        try:
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return
                try:
                    item = changes.get(timeout=wait)
                except queue.Empty:
                    return
                if isinstance(item, BaseException):
                    with api_errors():
                        raise item
                yield item
        finally:
            loop.stop()
