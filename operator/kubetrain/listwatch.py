"""The one list-and-watch loop of the project: the operator's children, the node agent's
Pods and volumes, and the SDK's jobs all follow their collections through it.

List, then watch from the list's resourceVersion (with bookmarks); when a watch request
ends, watch again from the last version seen; when the version has expired (410 Gone), list
again and hand on, as DELETED, whatever vanished in between. Errors are retried with a
doubling backoff, unless the caller says one is fatal. The transport is the caller's: a
``Source`` lists and opens watch streams, with the kubernetes client (``ClientSource``, the
operator and the SDK) or the node agent's own loopback JSON client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)
JSON = dict[str, Any]

WATCH_SECONDS = 300
"""How long one watch request lasts before it is renewed (the server may end it sooner)."""


class ExpiredError(Exception):
    """The watch's resourceVersion is too old: list again."""


class WatchError(Exception):
    """The server ended a watch with an error other than 410 Gone."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Stream(Protocol):
    """One open watch request: its events, until the server ends it; ``close`` from any
    thread ends it early."""

    def __iter__(self) -> Iterator[JSON]: ...

    def close(self) -> None: ...


class Source(Protocol):
    def list(self) -> JSON:
        """The list response: ``items`` and ``metadata.resourceVersion``."""
        ...

    def watch(self, version: str, seconds: int) -> Stream: ...


Handler = Callable[[str, JSON, bool], None]
"""Takes (event type, object, whether it comes from a listing)."""


def object_key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", ""))


def whole(obj: JSON) -> JSON:
    """Remember all of an object: for a caller that is handed on only what it remembers."""
    return obj


class ListWatch:
    """Keeps one collection flowing into ``handle``, from a daemon thread of its own.

    ``listed`` is called after each listing has been handed on; ``synced`` is set after the
    first. ``fatal`` tells errors that end the loop (kept in ``error``) from those retried;
    every other error is retried, those outside ``retried`` logged with their traceback.

    To tell what vanished between two listings, the loop remembers each object it handed
    on, as ``remember`` projects it (by default whole): a caller that keeps its own cache
    needs no more of it than what it must be told of a deletion. Such a DELETED carries
    the resourceVersion of the listing that no longer had the object.
    """

    def __init__(
        self,
        source: Source,
        handle: Handler,
        *,
        name: str,
        listed: Callable[[], None] = lambda: None,
        fatal: Callable[[BaseException], bool] = lambda err: False,
        retried: tuple[type[BaseException], ...] = (Exception,),
        max_backoff: float = 30.0,
        relist_seconds: float | None = None,
        remember: Callable[[JSON], JSON] = whole,
    ) -> None:
        self.source, self.handle, self.name, self.remember = source, handle, name, remember
        self.listed, self.fatal, self.retried = listed, fatal, retried
        self.max_backoff, self.relist_seconds = max_backoff, relist_seconds
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._known: dict[tuple[str, str], JSON] = {}
        self._stopping = threading.Event()
        self._stream: Stream | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; the thread (a daemon) is given ``timeout`` to end."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()  # unblocks the read in the watch thread
        self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _run(self) -> None:
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                try:
                    version = self._list()
                    backoff = 0.2
                    watched = 0.0
                    while not self._stopping.is_set():
                        seconds = WATCH_SECONDS
                        if self.relist_seconds is not None:
                            seconds = max(1, min(seconds, int(self.relist_seconds - watched)))
                        version = self._follow(version, seconds)
                        watched += seconds
                        if self.relist_seconds is not None and watched >= self.relist_seconds:
                            break  # a periodic relist catches whatever a watch could miss
                except ExpiredError:
                    continue
                except Exception as err:
                    if self._stopping.is_set():  # stop() closed the stream under the read
                        return
                    if self.fatal(err):
                        self.error = err
                        return
                    if isinstance(err, self.retried):
                        log.warning(
                            "watch of %s failed (%s); listing again in %.1fs",
                            self.name, err, backoff,
                        )  # fmt: skip
                    else:  # a bug, not the server: say so loudly, but never leave a dead watch
                        log.exception(
                            "watch of %s failed; listing again in %.1fs", self.name, backoff
                        )
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            self.done.set()

    def _list(self) -> str:
        """List afresh; what vanished since the last list is handed on as DELETED."""
        listing = self.source.list()
        version = str(listing["metadata"]["resourceVersion"])
        items = listing.get("items") or []
        seen = {object_key(i) for i in items}
        for key, obj in list(self._known.items()):
            if key not in seen:
                del self._known[key]
                meta = dict(obj.get("metadata") or {}, resourceVersion=version)
                self.handle("DELETED", dict(obj, metadata=meta), True)
        for item in items:
            self._known[object_key(item)] = self.remember(item)
            self.handle("ADDED", item, True)
        self.synced.set()
        self.listed()
        return version

    def _follow(self, version: str, seconds: int) -> str:
        """Hand on one watch request's events; the resourceVersion to go on from."""
        self._stream = stream = self.source.watch(version, seconds)
        if self._stopping.is_set():  # stop() ran while the request was on its way
            stream.close()
        try:
            for event in stream:
                if self._stopping.is_set():
                    break
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise ExpiredError()
                    raise WatchError(int(obj.get("code") or 0), str(obj.get("message")))
                version = str(obj["metadata"]["resourceVersion"])
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self._known.pop(object_key(obj), None)
                else:
                    self._known[object_key(obj)] = self.remember(obj)
                self.handle(kind, obj, False)
        finally:
            self._stream = None
            try:
                stream.close()  # release the connection, however the stream ended
            except Exception as err:
                log.debug("closing the watch of %s: %s", self.name, err)
        return version


class _ClientStream:
    """A watch response of the kubernetes client, read line by line as raw JSON."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __iter__(self) -> Iterator[JSON]:
        from kubernetes.watch.watch import iter_resp_lines  # noqa: PLC0415

        for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
            if line:
                yield json.loads(line)

    def close(self) -> None:
        response = self._response
        # shutdown() unblocks a read in another thread (close() would wait); RuntimeError:
        # the connection already went back to the pool, the stream had ended.
        with contextlib.suppress(RuntimeError):
            response.shutdown()
        response.release_conn()


class ClientSource:
    """A collection through a kubernetes-client list function, e.g.
    ``CoreV1Api.list_pod_for_all_namespaces`` (with its positional ``args``), as raw JSON:
    no model objects are built for what may be thousands of events."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        *args: Any,
        label_selector: str | None = None,
        field_selector: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.list_fn, self.args, self.connect_timeout = list_fn, args, connect_timeout
        self.selectors = {
            k: v
            for k, v in (("label_selector", label_selector), ("field_selector", field_selector))
            if v
        }

    def list(self) -> JSON:
        response = self.list_fn(
            *self.args,
            **self.selectors,
            _preload_content=False,
            _request_timeout=(self.connect_timeout, 60),
        )
        try:
            listing: JSON = json.loads(response.data)
        finally:
            response.release_conn()
        return listing

    def watch(self, version: str, seconds: int) -> Stream:
        response = self.list_fn(
            *self.args,
            **self.selectors,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _preload_content=False,
            _request_timeout=(self.connect_timeout, seconds + 30),
        )
        return _ClientStream(response)
