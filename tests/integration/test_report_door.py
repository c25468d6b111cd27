"""The report channel's door on a real TokenReview, and the annotation's write time as the
real API server records it: untrusted trainer input is refused with its reason, bounded per
Pod, and ordered by clocks the trainer cannot set."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetrain.api.report import ANNOTATION, CHANNEL_PATH, MAX_REPORT_BYTES
from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.pki import report_channel_tls
from kubetrain.localcluster.ports import free_ports
from kubetrain.operator.render import TRAINER_IDENTITY, trainer_identity
from kubetrain.operator.reports import (
    PodIdentity,
    Pushed,
    ReportServer,
    TokenReviewer,
    annotation_written_at,
    newer_pushed,
    server_context,
)
from tests.integration import kubelet
from tests.polling import eventually

pytestmark = pytest.mark.usefixtures("crds")  # the trainer policy


def report(**fields: Any) -> bytes:
    return json.dumps({"version": 1, "time": kubelet._now(), **fields}).encode()


@dataclass
class Operator:
    """The callbacks the operator gives the channel: what they were handed."""

    accepted: list[tuple[PodIdentity, Pushed]] = field(default_factory=list)
    warnings: list[tuple[PodIdentity, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, pod: PodIdentity, text: str) -> int:
        assert isinstance(text, Pushed)
        with self.lock:
            self.accepted.append((pod, text))
        return 202

    def warn(self, pod: PodIdentity, reason: str) -> None:
        with self.lock:
            self.warnings.append((pod, reason))


@dataclass
class Door:
    server: ReportServer
    operator: Operator
    port: int
    ca: Path

    def post(self, token: str, body: bytes) -> tuple[int, str, dict[str, str]]:
        context = ssl.create_default_context(cafile=str(self.ca))
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context)
        try:
            connection.request(
                "POST", CHANNEL_PATH, body, {"Authorization": f"Bearer {token}",
                                             "Content-Type": "application/json"},
            )  # fmt: skip
            answer = connection.getresponse()
            return answer.status, answer.read().decode(), dict(answer.getheaders())
        finally:
            connection.close()


def trainer_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    """A Pod running as the namespace's trainer identity, made by a stand-in operator (its own
    field manager); nothing runs it: a token is bound to the Pod object."""
    if not core.list_namespaced_service_account(
        namespace, field_selector=f"metadata.name={TRAINER_IDENTITY}"
    ).items:
        rbac = client.RbacAuthorizationV1Api(core.api_client)
        account, role, binding = trainer_identity(namespace)
        core.create_namespaced_service_account(namespace, account)
        rbac.create_namespaced_role(namespace, role)
        rbac.create_namespaced_role_binding(namespace, binding)
    pod: client.V1Pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, annotations={"kubetrain.io/workers": "1"}),
            spec=client.V1PodSpec(
                service_account_name=TRAINER_IDENTITY,
                containers=[client.V1Container(name="trainer", image="trainer")],
            ),
        ),
        field_manager="stand-in-operator",
    )
    return pod


Open = Callable[[int], Door]


@pytest.fixture
def open_door(tmp_path: Path, core: client.CoreV1Api) -> Iterator[Open]:
    """Starts a report channel whose Pods may push ``burst`` reports (and no more: the
    bucket does not refill while a test runs), on a real TokenReview."""
    tls = report_channel_tls(tmp_path / "tls")
    servers: list[ReportServer] = []

    def start(burst: int) -> Door:
        port, operator = free_ports(1)[0], Operator()
        server = ReportServer(
            f"127.0.0.1:{port}",
            server_context(tls),
            TokenReviewer(client.AuthenticationV1Api(core.api_client)),
            operator.accept,
            lambda: True,
            warn=operator.warn,
            rate=1e-6,
            burst=burst,
        )
        server.start()
        servers.append(server)
        return Door(server, operator, port, tls / "ca.crt")

    yield start
    for server in servers:
        server.stop()


def test_bad_reports_are_refused_at_the_door_with_the_reason_and_one_warning_each(
    open_door: Open, core: client.CoreV1Api, quiet_namespace: str
) -> None:
    door = open_door(100)
    pod = trainer_pod(core, quiet_namespace, "w-0")
    token = kubelet.report_token(core, quiet_namespace, "w-0")
    me = PodIdentity(quiet_namespace, "w-0", pod.metadata.uid)

    before = datetime.now(UTC)
    assert door.post(token, report(step=3, totalSteps=10))[0] == 202
    (who, pushed), = door.operator.accepted  # fmt: skip
    assert who == me and pushed.report.step == 3 and pushed.report.total_steps == 10
    assert before <= pushed.received_at <= datetime.now(UTC)  # the operator's clock

    bad = {
        b"not json": "report is not valid JSON",
        report(step=-1): "invalid report field step",
        report(loss=float("nan")): "NaN is not a finite number",
        report(loss=float("inf")): "Infinity is not a finite number",
        report(step=11, totalSteps=10): "step 11 is past totalSteps 10",
    }
    for body, reason in bad.items():
        status, text, _ = door.post(token, body)
        assert (status, reason in text) == (400, True), (status, text)
    for size in (MAX_REPORT_BYTES + 1, 4 * MAX_REPORT_BYTES):  # one Warning for both
        status, text, _ = door.post(token, b"{" + b" " * size + b"}")
        assert status == 413 and "over the 32768-byte limit" in text, (status, text)
    for body in bad:  # the same mistakes again: answered, but no second Warning
        assert door.post(token, body)[0] == 400
    assert len(door.operator.accepted) == 1  # only a decoded report reaches the operator

    def warned() -> list[tuple[PodIdentity, str]] | None:
        with door.operator.lock:
            found = list(door.operator.warnings)
        return found if len(found) >= len(bad) + 1 else None

    warnings = eventually(warned, what="a Warning per distinct bad report")
    assert {who for who, _ in warnings} == {me}
    assert len(warnings) == len(bad) + 1 and len({r for _, r in warnings}) == len(warnings)


def test_a_pod_that_pushes_too_often_is_told_when_to_come_back(
    open_door: Open, core: client.CoreV1Api, quiet_namespace: str
) -> None:
    door = open_door(12)
    trainer_pod(core, quiet_namespace, "w-0")
    trainer_pod(core, quiet_namespace, "w-1")
    token = kubelet.report_token(core, quiet_namespace, "w-0")
    answers = [door.post(token, report(step=step))[0] for step in range(12)]
    assert answers == [202] * 12
    status, text, headers = door.post(token, report(step=12))
    assert status == 429 and "too many reports" in text and int(headers["Retry-After"]) >= 1
    assert door.post(token, b"not json")[0] == 429  # counted before it is read
    other = kubelet.report_token(core, quiet_namespace, "w-1")
    assert door.post(other, report(step=1))[0] == 202  # another Pod has its own bucket


def _raw_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The Pod as the API server sends it (JSON, managedFields and all)."""
    answer = core.read_namespaced_pod(name, namespace, _preload_content=False)
    pod: dict[str, Any] = json.loads(answer.data)
    return pod


def test_the_annotations_write_time_is_the_api_servers_and_orders_a_push_against_it(
    cluster: ControlPlane, core: client.CoreV1Api, quiet_namespace: str
) -> None:
    pod = trainer_pod(core, quiet_namespace, "w-0")
    assert annotation_written_at(_raw_pod(core, quiet_namespace, "w-0")) is None  # not yet

    trainer = kubelet.as_trainer(cluster, core, pod)
    steps = iter(range(1, 10_000))

    def annotate() -> datetime | None:
        """The trainer writes its report (its own clock says 1999: it counts for nothing)."""
        body = {"version": 1, "time": "1999-01-01T00:00:00Z", "step": next(steps)}
        patch = {"metadata": {"annotations": {ANNOTATION: json.dumps(body)}}}
        trainer.patch_namespaced_pod("w-0", quiet_namespace, patch)
        return annotation_written_at(_raw_pod(core, quiet_namespace, "w-0"))

    first = annotate()
    assert first is not None
    raw = _raw_pod(core, quiet_namespace, "w-0")
    owners = [e for e in raw["metadata"]["managedFields"]
              if "f:annotations" in (e.get("fieldsV1") or {}).get("f:metadata", {})]  # fmt: skip
    assert {e["manager"] for e in owners} >= {"stand-in-operator"}  # owns kubetrain.io/workers
    assert annotation_written_at(raw, "kubetrain.io/workers") is not None

    # Another manager's write (the operator's) does not move the report's write time.
    core.patch_namespaced_pod(
        "w-0", quiet_namespace, {"metadata": {"labels": {"seen": "yes"}}},
        field_manager="stand-in-operator",
    )  # fmt: skip
    assert annotation_written_at(_raw_pod(core, quiet_namespace, "w-0")) == first

    # A push received now, then the trainer annotates again: once the API server's clock
    # has moved past the push's second, the annotation is the newer one; a push received
    # after that is newer again.
    pushed_at = datetime.now(UTC)
    written = eventually(
        lambda: (at := annotate()) and at > pushed_at.replace(microsecond=0) and at,
        timeout=10,
        what="an annotation written in a later second than the push",
    )
    assert not newer_pushed(pushed_at, written)
    assert newer_pushed(datetime.now(UTC), written)
