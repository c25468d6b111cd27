"""The one list-and-watch loop: relists on expiry, hands on what vanished, retries or stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kubetrain.listwatch import JSON, ListWatch, WatchError
from tests.polling import eventually


def pod(name: str, version: int) -> JSON:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(version)}}


class FakeStream:
    def __init__(self, events: list[JSON], hold: threading.Event | None = None) -> None:
        self.events, self.hold, self.closed = events, hold, threading.Event()

    def __iter__(self) -> Iterator[JSON]:
        yield from self.events
        if self.hold is not None:  # a watch that stays open until closed
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class FakeSource:
    """Serves listings and watch streams from scripts; records what the loop asked."""

    def __init__(self, listings: list[JSON], streams: list[Any]) -> None:
        self.listings, self.streams = listings, streams
        self.watched_from: list[str] = []
        self.last: FakeStream | None = None

    def list(self) -> JSON:
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]

    def watch(self, version: str, seconds: int) -> FakeStream:
        self.watched_from.append(version)
        step = self.streams.pop(0) if self.streams else FakeStream([], hold=threading.Event())
        if isinstance(step, Exception):
            raise step
        self.last = step
        return step


def listing(version: int, *pods: JSON) -> JSON:
    return {"metadata": {"resourceVersion": str(version)}, "items": list(pods)}


def test_watches_from_the_last_version_and_relists_after_expiry() -> None:
    seen: list[tuple[str, str, bool]] = []
    source = FakeSource(
        [listing(10, pod("a", 9), pod("b", 8)), listing(20, pod("b", 15), pod("c", 19))],
        [
            FakeStream(
                [
                    {"type": "MODIFIED", "object": pod("a", 11)},
                    {"type": "BOOKMARK", "object": pod("", 12)},
                ]
            ),
            FakeStream([{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]),
        ],
    )
    loop = ListWatch(source, lambda k, o, listing: seen.append((k, o["metadata"]["name"], listing)),
                     name="pods")  # fmt: skip
    loop.start()
    eventually(lambda: len(source.watched_from) >= 3, what="a watch after the relist")
    loop.stop()
    assert source.watched_from[:3] == ["10", "12", "20"]  # after the bookmark; after the relist
    assert seen == [
        ("ADDED", "a", True), ("ADDED", "b", True),
        ("MODIFIED", "a", False),
        ("DELETED", "a", True), ("ADDED", "b", True), ("ADDED", "c", True),
    ]  # fmt: skip
    assert loop.synced.is_set() and loop.error is None


def test_errors_are_retried_unless_fatal() -> None:
    source = FakeSource([listing(1)], [WatchError(500, "busy"), WatchError(403, "forbidden")])
    loop = ListWatch(
        source,
        lambda *_: None,
        name="pods",
        fatal=lambda err: isinstance(err, WatchError) and err.status == 403,
    )
    loop.start()
    assert loop.done.wait(10)
    assert isinstance(loop.error, WatchError) and loop.error.status == 403
    assert source.watched_from == ["1", "1"]  # the 500 was retried after listing again


def test_stop_ends_an_open_watch() -> None:
    source = FakeSource([listing(1)], [])
    loop = ListWatch(source, lambda *_: None, name="pods")
    loop.start()
    eventually(lambda: source.last is not None, what="an open watch")
    loop.stop(timeout=5)
    assert loop.done.is_set() and source.last is not None and source.last.closed.is_set()


class ClosedStream(FakeStream):
    """A stream that ended by itself, whose close then fails (its connection went back to the
    pool): as urllib3 answers shutdown() then."""

    def close(self) -> None:
        raise RuntimeError("Cannot shutdown as connection has already been released to the pool")


def test_a_stream_that_ended_is_followed_by_the_next_whatever_its_close_says() -> None:
    source = FakeSource([listing(1)], [ClosedStream([]), ClosedStream([]), KeyError("bug")])
    loop = ListWatch(source, lambda *_: None, name="pods", retried=(WatchError,))
    loop.start()
    eventually(lambda: len(source.watched_from) >= 4, what="watching on after every end")
    loop.stop()
    assert source.watched_from[:4] == ["1", "1", "1", "1"]  # an unexpected error: list again
    assert loop.error is None


def test_remembers_only_the_projection_and_a_vanished_object_carries_the_listings_version() -> None:
    big = dict(pod("a", 9), spec={"env": [{"name": "X", "value": "x" * 10_000}]})
    seen: list[tuple[str, JSON]] = []
    source = FakeSource([listing(10, big), listing(20)], [FakeStream([
        {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
    ])])  # fmt: skip
    loop = ListWatch(
        source,
        lambda kind, obj, _: seen.append((kind, obj)),
        name="pods",
        remember=lambda obj: {"metadata": obj["metadata"]},
    )
    loop.start()
    eventually(lambda: len(seen) >= 2, what="the Pod listed, then gone at the relist")
    loop.stop()
    assert seen[0] == ("ADDED", big)  # handed on whole
    kind, gone = seen[1]
    assert kind == "DELETED" and "spec" not in gone  # only what was remembered of it
    assert gone["metadata"] == {"namespace": "ns", "name": "a", "resourceVersion": "20"}
