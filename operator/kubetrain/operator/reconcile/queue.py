"""A work queue of job keys: deduplicated, delayable, one worker per key at a time."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to reconcile; adding a key that is already waiting is a no-op.

    A key being processed is never handed to a second worker: if it is added meanwhile,
    it is handed out again once ``done`` is called for it. A key has at most one delayed
    look, the earliest asked for, so the queue holds at most two entries per key.
    """

    def __init__(self) -> None:
        self._ready: list[K] = []
        self._waiting: set[K] = set()
        self._processing: set[K] = set()
        self._again: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[
            K, float
        ] = {}  # the one delayed look of each key (heap entries may be stale)
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        with self._cond:
            if delay > 0:
                due = time.monotonic() + delay
                if self._due.get(key, float("inf")) <= due:
                    return  # an earlier look is already scheduled
                self._due[key] = due
                self._seq += 1
                heapq.heappush(self._delayed, (due, self._seq, key))
            elif key in self._processing:
                self._again.add(key)
            elif key not in self._waiting:
                self._waiting.add(key)
                self._ready.append(key)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process, or None when closed or on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                self._promote()
                if self._ready:
                    key = self._ready.pop(0)
                    self._waiting.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._delayed[0][0] - time.monotonic() if self._delayed else None
                if wait is not None:
                    wait = max(wait, 0.0)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._again:
                self._again.discard(key)
                if key not in self._waiting:
                    self._waiting.add(key)
                    self._ready.append(key)
                self._cond.notify()

    def forget(self, key: K) -> None:
        """Drop a key's pending looks (its job is gone); a running reconcile finishes."""
        with self._cond:
            self._due.pop(key, None)
            self._again.discard(key)
            if key in self._waiting:
                self._waiting.discard(key)
                self._ready.remove(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._due)

    def _promote(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) != due:
                continue  # superseded by an earlier look, or forgotten
            del self._due[key]
            if key in self._processing:
                self._again.add(key)
            elif key not in self._waiting:
                self._waiting.add(key)
                self._ready.append(key)
