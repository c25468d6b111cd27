"""List-and-watch of the operator's children, filtered by the API server.

Only objects that carry kubetrain's labels ever reach the operator: the label selector is
sent with the list and the watch, so a cluster with thousands of unrelated Pods costs it
nothing. Each ``Watcher`` keeps one collection current from a thread of its own (list,
then watch from that list's resourceVersion; list again when the watch expires) and hands
every change to a callback, with the ``type``/``object`` shape of a watch event.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from kubetrain.operator import metrics

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Handler = Callable[[Mapping[str, Any]], None]

WATCH_SECONDS = 300
"""How long one watch request lasts before it is renewed (the server may end it sooner)."""


class NamespaceFilter:
    """The operator's ``--namespace`` patterns: globs, ``!glob`` to leave out, commas allowed."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        globs = [g.strip() for p in patterns for g in p.split(",") if g.strip()]
        self.include = [g for g in globs if not g.startswith("!")]
        self.exclude = [g[1:] for g in globs if g.startswith("!")]

    def __call__(self, namespace: str) -> bool:
        wanted = not self.include or any(fnmatch.fnmatchcase(namespace, g) for g in self.include)
        return wanted and not any(fnmatch.fnmatchcase(namespace, g) for g in self.exclude)


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old: list again."""


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
        self.list_all, self.kind, self.selector = list_all, kind, selector
        self.handle, self.namespaces = handle, namespaces
        self._known: dict[tuple[str, str], JSON] = {}
        self.synced = threading.Event()  # set once the first list is handed on
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch {kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; the thread (a daemon) is given ``timeout`` to end."""
        self._stopping.set()
        response = self._response
        if response is not None:
            response.shutdown()  # unblocks the read in the watch thread (close() would wait)
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                version = self._list()
                self.synced.set()
                backoff = 0.5
                while not self._stopping.is_set():
                    version = self._follow(version)
            except _ExpiredError:
                continue
            except Exception as err:
                if self._stopping.is_set():  # stop() closed the stream under the read
                    return
                if not isinstance(err, ApiException | HTTPError | OSError | ValueError):
                    raise
                metrics.ERRORS.labels("watch").inc()
                log.warning(
                    "watch of %s failed (%s); listing again in %.1fs", self.kind, err, backoff
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _emit(self, kind: str, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        if not self.namespaces(meta.get("namespace", "")):
            return
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = obj
        metrics.WATCH_EVENTS.labels(self.kind).inc()
        self.handle({"type": kind, "object": dict(obj, kind=self.kind)})

    def _list(self) -> str:
        """List afresh; what vanished since the last list is handed on as DELETED."""
        response = self.list_all(
            label_selector=self.selector, _preload_content=False, _request_timeout=(5, 60)
        )
        try:
            listing = json.loads(response.data)
        finally:
            response.release_conn()
        items = listing.get("items") or []
        seen = {(i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in items}
        for key, obj in list(self._known.items()):
            if key not in seen:
                self._emit("DELETED", obj)
        for item in items:
            self._emit("ADDED", item)
        return str(listing["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> str:
        """Hand on one watch request's events; the resourceVersion to go on from."""
        self._response = response = self.list_all(
            label_selector=self.selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(5, WATCH_SECONDS + 30),
        )
        if self._stopping.is_set():  # stop() ran while the request was on its way
            response.shutdown()
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _ExpiredError()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str(obj["metadata"]["resourceVersion"])
                if kind != "BOOKMARK":
                    self._emit(str(kind), obj)
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return version
