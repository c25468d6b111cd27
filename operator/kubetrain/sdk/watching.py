"""A watch on TrainingJobs that survives expiry, yielding the current jobs at each change.

List once, then watch from the list's resourceVersion; when the watch ends (the server's
timeout) or expires (410 Gone), list again. Consumers see one snapshot after each listing
and after every change, so waiting on a job never polls at a fixed interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kubetrain.api import GROUP, PLURAL, VERSION, TrainingJob
from kubetrain.sdk import build
from kubetrain.sdk.errors import api_errors

Snapshot = dict[str, TrainingJob]
"""Jobs by ``namespace/name``."""

CONNECT_TIMEOUT = 10.0


def key(job: TrainingJob) -> str:
    return f"{job.metadata.namespace}/{job.metadata.name}"


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

    def _call(self) -> tuple[Any, tuple[str, ...]]:
        """The list function (watched with ``watch=True``) and its positional arguments."""
        if self.namespace is None:
            return (self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL))
        return (
            self.custom.list_namespaced_custom_object,
            (GROUP, VERSION, self.namespace, PLURAL),
        )

    def _list(self) -> tuple[Snapshot, str]:
        func, args = self._call()
        kwargs = {"field_selector": self.field_selector} if self.field_selector else {}
        with api_errors():
            listing = cast(dict[str, Any], func(*args, **kwargs))
        jobs = {}
        for item in listing.get("items") or []:
            job = build.parse(item)
            jobs[key(job)] = job
        return jobs, str(listing["metadata"]["resourceVersion"])

    def snapshots(self, deadline: float | None = None) -> Iterator[Snapshot]:
        """The jobs after the first listing and after each change, until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value; None watches until the caller stops.
        """
        while deadline is None or time.monotonic() < deadline:
            jobs, version = self._list()
            yield dict(jobs)
            while deadline is None or time.monotonic() < deadline:
                window = self.resync_seconds
                if deadline is not None:
                    window = min(window, deadline - time.monotonic())
                if window <= 0:
                    return
                seconds = max(1, math.ceil(window))
                ended, version = yield from self._stream(jobs, version, seconds)
                if ended == "expired":
                    break  # list again from a fresh resourceVersion
                if ended == "timeout" and seconds >= self.resync_seconds:
                    break  # a periodic relist catches anything a watch might have missed

    def _stream(
        self, jobs: Snapshot, version: str, seconds: int
    ) -> Generator[Snapshot, None, tuple[str, str]]:
        """Apply watch events to ``jobs`` for ``seconds``; how it ended and the last version."""
        func, args = self._call()
        kwargs: dict[str, Any] = {
            "resource_version": version,
            "timeout_seconds": seconds,
            "allow_watch_bookmarks": True,
            "_request_timeout": (CONNECT_TIMEOUT, seconds + 15),
        }
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        stream: Any = cast(Any, watch).Watch()
        try:
            with api_errors():
                try:
                    for event in stream.stream(func, *args, **kwargs):
                        kind, obj = event["type"], event["raw_object"]
                        version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                        if kind == "BOOKMARK":
                            continue
                        job = build.parse(obj)
                        if kind == "DELETED":
                            jobs.pop(key(job), None)
                        else:
                            jobs[key(job)] = job
                        yield dict(jobs)
                except ApiException as err:
                    if err.status == 410:
                        return "expired", version
                    raise
        finally:
            stream.stop()
        return "timeout", version
