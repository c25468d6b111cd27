"""List-and-watch of the operator's children, filtered by the API server.

Only objects that carry kubetrain's labels ever reach the operator: the label selector is
sent with the list and the watch, so a cluster with thousands of unrelated Pods costs it
nothing. Each ``Watcher`` keeps one collection current through the project's one
list-and-watch loop (``kubetrain.listwatch``) and hands every change to a callback, with
the ``type``/``object`` shape of a watch event, after the operator's ``--namespace``
patterns.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetrain.listwatch import ClientSource, ListWatch, WatchError
from kubetrain.operator import metrics

JSON = dict[str, Any]
Handler = Callable[[Mapping[str, Any]], None]

IDENTITY = ("namespace", "name", "uid", "labels", "resourceVersion")
"""What the operator must be told of a child that vanished between two listings: which
object it was, and whose (its labels name the job). Every kind watched needs the same."""


def identity(obj: JSON) -> JSON:
    """The part of an object the watch remembers; the cache keeps the rest it reads."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in IDENTITY if k in meta}}


class NamespaceFilter:
    """The operator's ``--namespace`` patterns: globs, ``!glob`` to leave out, commas allowed."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        globs = [g.strip() for p in patterns for g in p.split(",") if g.strip()]
        self.include = [g for g in globs if not g.startswith("!")]
        self.exclude = [g[1:] for g in globs if g.startswith("!")]

    def __call__(self, namespace: str) -> bool:
        wanted = not self.include or any(fnmatch.fnmatchcase(namespace, g) for g in self.include)
        return wanted and not any(fnmatch.fnmatchcase(namespace, g) for g in self.exclude)


class Watcher:
    """Keeps one collection, selected by labels on the server, flowing into ``handle``.

    ``list_all`` is a kubernetes-client list function for all namespaces (for example
    ``CoreV1Api.list_pod_for_all_namespaces``); ``kind`` is added to every object, which
    list responses leave out.
    """

    def __init__(
        self,
        list_all: Callable[..., Any],
        kind: str,
        selector: str,
        handle: Handler,
        namespaces: NamespaceFilter,
    ) -> None:
        self.kind, self.handle, self.namespaces = kind, handle, namespaces
        self._loop = ListWatch(
            ClientSource(list_all, label_selector=selector),
            self._emit,
            name=kind,
            retried=(ApiException, HTTPError, OSError, ValueError, WatchError),
            fatal=self._count_error,
            remember=identity,
        )
        self.synced = self._loop.synced  # set once the first list is handed on

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; the thread (a daemon) is given ``timeout`` to end."""
        self._loop.stop(timeout)

    @staticmethod
    def _count_error(err: BaseException) -> bool:
        metrics.ERRORS.labels("watch").inc()
        return False  # always retried

    def _emit(self, kind: str, obj: JSON, listing: bool) -> None:
        if not self.namespaces((obj.get("metadata") or {}).get("namespace", "")):
            return
        metrics.WATCH_EVENTS.labels(self.kind).inc()
        self.handle({"type": kind, "object": dict(obj, kind=self.kind)})
