"""The elector on the real API server: an error of its own is retried, a run of them ends
it, and an elector that ended fails the operator's liveness probe (kopf's own endpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kopf._core.engines.probing import health_reporter  # the server behind --liveness
from kubernetes import client

from kubetrain.localcluster.ports import free_ports
from kubetrain.operator import handlers  # noqa: F401  (its probes join kopf's registry)
from kubetrain.operator.leader import LeaderElector
from tests.polling import eventually


def elector(api_client: client.ApiClient, on_elected: Any) -> LeaderElector:
    return LeaderElector(
        api_client,
        "default",
        f"elector-{uuid.uuid4().hex[:8]}",
        "me",
        lease_seconds=2,
        on_elected=on_elected,
    )


def holder(api_client: client.ApiClient, made: LeaderElector) -> str | None:
    lease: Any = client.CoordinationV1Api(api_client).read_namespaced_lease(made.name, "default")
    return lease.spec.holder_identity  # type: ignore[no-any-return]


def test_an_error_of_its_own_is_retried_and_the_replica_leads(
    api_client: client.ApiClient,
) -> None:
    calls: list[int] = []

    def elected() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a defect, once")

    made = elector(api_client, elected)
    made.start()
    try:
        eventually(made.leading.is_set, what="leading after the retry")
        assert len(calls) == 2 and made.alive()  # on_elected ran again, and took
    finally:
        made.stop()


@contextlib.contextmanager
def liveness(memo: kopf.Memo) -> Iterator[str]:
    """kopf's liveness endpoint for the operator's registered probes, on a port of its own."""
    url = f"http://127.0.0.1:{free_ports(1)[0]}/healthz"
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(
        health_reporter(
            url,
            memo=memo,
            indices={},
            registry=kopf.get_default_registry(),
            settings=kopf.OperatorSettings(),
            ready_flag=ready,
        )
    )

    def serve() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        eventually(ready.is_set, what="the liveness endpoint")
        yield url
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def probe(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_an_elector_that_keeps_failing_ends_hands_the_lease_over_and_fails_liveness(
    api_client: client.ApiClient,
) -> None:
    def elected() -> None:
        raise RuntimeError("a defect, every time")

    made = elector(api_client, elected)
    memo = kopf.Memo(elector=made)
    with liveness(memo) as url:
        status, body = probe(url)
        assert status == 200 and "leaderElection" in json.loads(body)  # a live standby
        made.start()
        eventually(lambda: not made.alive(), timeout=60, what="the elector to give up")
        assert isinstance(made.error, RuntimeError) and not made.leading.is_set()
        assert holder(api_client, made) in (None, "")  # released: a standby takes it at once
        # kopf keeps a probe's answer for 10 s: poll until the fresh one comes.
        eventually(lambda: probe(url)[0] == 500, timeout=30, what="liveness to fail")


@pytest.fixture(autouse=True)
def _quiet_kopf_probe_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="kopf")
