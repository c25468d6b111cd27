"""A list-and-watch cache of one kind of object, kept current by a background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj, WatchStream

log = logging.getLogger(__name__)


def key_of(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class Informer:
    """Lists a collection once, then follows its watch; relists when the watch expires.

    ``on_change`` is called (from the informer's thread) after every change, so a
    controller can wake up; readers take ``snapshot()`` copies and never block the watch.
    """

    def __init__(self, kube: Kube, path: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.kube = kube
        self.path = path
        self.on_change = on_change
        self.version = 0  # bumped on every change: lets readers skip unchanged caches
        self._items: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._stream: WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(timeout=10)

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list has landed in the cache."""
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._items.get(key)

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                version = self._list()
                backoff = 0.2
                while not self._stopping.is_set():
                    version = self._follow(version)
            except _ExpiredError:
                continue
            except (ApiError, ValueError, OSError) as err:
                if self._stopping.is_set():
                    return
                log.warning("watch of %s failed (%s); relisting in %.1fs", self.path, err, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _list(self) -> str:
        listing = self.kube.get(self.path)
        items = {key_of(obj): obj for obj in listing.get("items", [])}
        with self._lock:
            self._items = items
            self.version += 1
        self._synced.set()
        self.on_change()
        return str(listing["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> str:
        """Apply one watch's events; return the resource version to continue from."""
        self._stream = self.kube.watch(self.path, version)
        if self._stopping.is_set():  # stop() ran before the stream existed
            self._stream.close()
        try:
            for event in self._stream:
                kind, obj = event.get("type"), event.get("object", {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _ExpiredError()
                    raise ApiError(int(obj.get("code", 0)), str(obj.get("message")))
                version = str(obj["metadata"]["resourceVersion"])
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._items.pop(key_of(obj), None)
                    else:
                        self._items[key_of(obj)] = obj
                    self.version += 1
                self.on_change()
        finally:
            self._stream = None
        return version


class _ExpiredError(Exception):
    """The watch's resource version is too old: list again."""
