"""A list-and-watch cache of one kind of object, kept current by a background thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubetrain.listwatch import ListWatch, Stream, WatchError
from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj


def key_of(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class _PathSource:
    """A collection at an API path, through the node agent's own client."""

    def __init__(self, kube: Kube, path: str) -> None:
        self.kube, self.path = kube, path

    def list(self) -> Obj:
        return self.kube.get(self.path)

    def watch(self, version: str, seconds: int) -> Stream:
        return self.kube.watch(self.path, version, timeout_seconds=seconds)


class Informer:
    """Lists a collection once, then follows its watch; relists when the watch expires
    (the project's one list-and-watch loop, ``kubetrain.listwatch``).

    ``on_change`` is called (from the informer's thread) after every change, so a
    controller can wake up; readers take ``snapshot()`` copies and never block the watch.
    """

    def __init__(self, kube: Kube, path: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.on_change = on_change
        self.version = 0  # bumped on every change: lets readers skip unchanged caches
        self._items: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._loop = ListWatch(
            _PathSource(kube, path),
            self._apply,
            name=path,
            listed=on_change,
            retried=(ApiError, WatchError, ValueError, OSError),
            max_backoff=5.0,
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=10)

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list has landed in the cache."""
        return self._loop.synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._loop.synced.is_set()

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._items.get(key)

    def _apply(self, kind: str, obj: Obj, listing: bool) -> None:
        with self._lock:
            if kind == "DELETED":
                self._items.pop(key_of(obj), None)
            else:
                self._items[key_of(obj)] = obj
            self.version += 1
        if not listing:  # a listing wakes the controller once, when it is all in
            self.on_change()
