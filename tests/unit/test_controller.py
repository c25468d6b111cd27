"""The Controller's workers: a deletion that races a pass leaves nothing behind, and a pass
that loses leadership stops without counting an error.

The reconciler is played by the test (its passes are what races here); no request is sent:
the Cluster is never called.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client

from kubetrain.operator import metrics
from kubetrain.operator.controller import Controller
from kubetrain.operator.kube import Cluster, NotLeadingError
from kubetrain.operator.leader import Leadership
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.settings import Settings
from tests.clock import Clock
from tests.polling import eventually

JSON = dict[str, Any]


def job(version: int, name: str = "a") -> JSON:
    meta = {"namespace": "ns", "name": name, "resourceVersion": str(version), "uid": name}
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob", "metadata": meta}


class Pass:
    """Plays the reconciler: each pass writes the job's status back into the cache (the
    response of its write) and keeps per-job memory, as the real one does."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.memory: dict[Key, int] = {}
        self.passes = 0
        self.seen: list[Key] = []
        self.started = threading.Event()
        self.go_on = threading.Event()
        self.raise_first: BaseException | None = None

    def reconcile(self, key: Key) -> float | None:
        self.seen.append(key)
        if key[1] != "a":
            return None
        self.passes += 1
        self.started.set()
        assert self.go_on.wait(30)
        if self.raise_first is not None:
            err, self.raise_first = self.raise_first, None
            raise err
        self.cache.put_job(job(6))  # its status write, sent before the deletion
        self.memory[key] = self.memory.get(key, 0) + 1  # e.g. when it last wrote
        return 30.0  # a later look, as a running job wants

    def forget(self, key: Key) -> None:
        self.memory.pop(key, None)


def controller(gate: Any) -> tuple[Controller, Pass]:
    made = Controller(Cluster(client.ApiClient()), Settings(), workers=1)
    played = Pass(made.cache)
    made.reconciler = played  # type: ignore[assignment]
    made.active = gate
    return made, played


def test_a_deletion_during_a_pass_leaves_no_job_no_look_and_no_memory() -> None:
    always = threading.Event()
    always.set()
    made, played = controller(always)
    made.job_event({"type": "ADDED", "object": job(5)})
    made.start()
    try:
        assert played.started.wait(30)
        made.job_event({"type": "DELETED", "object": job(7)})  # while the pass runs
        made.job_event({"type": "ADDED", "object": job(8, "b")})  # one worker: b comes after
        played.go_on.set()
        eventually(lambda: ("ns", "b") in played.seen, what="the pass after the deleted job's")
        assert made.cache.job(("ns", "a")) is None
        assert played.memory == {}
        assert len(made.queue) == 0  # no later look of the deleted job
        assert played.passes == 1
    finally:
        made.stop()


def test_a_pass_that_loses_leadership_stops_and_the_job_waits_for_the_next_pass() -> None:
    clock = Clock()
    leading = Leadership(renew_deadline=10.0, clock=clock)
    leading.renewed()
    made, played = controller(leading)
    played.raise_first = NotLeadingError("not the leader: create Pod ns/a-worker-0-a1 not sent")
    errors = metrics.ERRORS.labels("unexpected")._value.get()
    made.job_event({"type": "ADDED", "object": job(5)})
    made.start()
    try:
        assert played.started.wait(30)
        clock.now += 11.0  # the renew deadline passes mid-pass
        played.go_on.set()
        eventually(lambda: len(made.queue) == 1, what="the job back in the queue")
        assert played.passes == 1  # no pass while leadership is stale
        leading.renewed()
        eventually(lambda: played.passes == 2, what="the next pass, once renewed")
        assert metrics.ERRORS.labels("unexpected")._value.get() == errors
    finally:
        made.stop()


def test_the_echo_of_the_operators_own_status_write_queues_no_pass() -> None:
    made, _ = controller(threading.Event())  # not started: the queue shows what was asked
    made.job_event({"type": "ADDED", "object": job(5)})
    assert len(made.queue) == 1 and made.queue.get(timeout=1.0) == ("ns", "a")
    made.cache.put_job(job(6))  # the response of the pass's status write
    made.queue.done(("ns", "a"))
    made.job_event({"type": "MODIFIED", "object": job(6)})  # its echo from the watch
    made.job_event({"type": "MODIFIED", "object": job(5)})  # a late event, older still
    assert len(made.queue) == 0
    made.job_event({"type": "MODIFIED", "object": job(7)})  # a change of someone else's
    assert len(made.queue) == 1
