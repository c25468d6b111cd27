"""The report channel's pure parts: which pushed reports are mirrored at once, which of a
pushed and an annotated report is newer, whose token it is, and how a trainer falls back to
its Pod when the channel is down."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from kubetrain.api.report import CHANNEL_AUDIENCE
from kubetrain.operator.report_door import Pushed, receive
from kubetrain.operator.report_tokens import _identity
from kubetrain.operator.reports import (
    Inbox,
    PodIdentity,
    TokenReviewer,
    annotation_written_at,
    newer_pushed,
    report_write_entries,
)
from kubetrain.trainer.reporter import ChannelError, ChannelSink


def text(**fields: Any) -> str:
    return json.dumps({"version": 1, "time": "2026-12-01T10:00:00Z", **fields})


def push(**fields: Any) -> Pushed:
    """A report as the channel's door takes it."""
    return receive(text(**fields).encode(), datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC))


def cp(id_: str, step: int) -> dict[str, Any]:
    return {"id": id_, "epoch": 0, "step": step, "createdAt": "2026-12-01T10:00:00Z",
            "path": f"/checkpoints/{id_}"}  # fmt: skip


def test_only_more_than_progress_is_significant() -> None:
    inbox = Inbox()
    assert inbox.put("uid", push(step=1, epoch=0, state="running"))  # the first one
    assert not inbox.put("uid", push(step=2, epoch=0, state="running", loss=0.5))
    assert inbox.put("uid", push(step=3, epoch=1, state="running"))  # an epoch ended
    assert inbox.put("uid", push(step=3, epoch=1, checkpoints=[cp("step-3", 3)]))
    assert inbox.put("uid", push(step=4, epoch=1, checkpoints=[cp("step-3", 3)], state="stopping"))
    assert inbox.get("uid") == text(
        step=4, epoch=1, checkpoints=[cp("step-3", 3)], state="stopping"
    )
    assert len(inbox) == 1
    inbox.drop("uid")
    assert inbox.get("uid") is None and len(inbox) == 0


def test_a_new_latest_checkpoint_is_mirrored_at_once_at_most_once_an_interval() -> None:
    now = [0.0]
    inbox = Inbox(checkpoint_seconds=20, clock=lambda: now[0])
    assert inbox.put("uid", push(step=10, checkpoints=[cp("a", 5), cp("b", 10)]))  # the first
    now[0] = 30.0
    assert inbox.put("uid", push(step=15, checkpoints=[cp("a", 5), cp("b", 10), cp("c", 15)]))
    assert not inbox.put("uid", push(step=16, checkpoints=[cp("b", 10), cp("c", 15)]))  # pruned
    assert not inbox.put("uid", push(step=16, checkpoints=[cp("c", 15), cp("b", 10)]))  # reordered
    assert not inbox.put("uid", push(step=16, checkpoints=[cp("c", 15)]))
    now[0] = 40.0  # a new one 10 s after the last mirrored: waits for the throttled write
    assert not inbox.put("uid", push(step=20, checkpoints=[cp("c", 15), cp("d", 20)]))
    for step in range(21, 30):  # a trainer that invents one a push
        now[0] += 1
        assert not inbox.put("uid", push(step=step, checkpoints=[cp(f"x{step}", step)]))
    now[0] = 50.0
    assert inbox.put("uid", push(step=30, checkpoints=[cp("e", 30)]))  # 20 s on: at once again
    assert inbox.put("uid", push(step=31, checkpoints=[cp("e", 30)], state="stopping"))
    inbox.drop("uid")
    assert inbox.put("uid", push(step=31, checkpoints=[cp("f", 31)]))  # a new Pod's first


def test_the_inbox_keeps_what_the_door_decoded_and_when_it_came() -> None:
    at = datetime(2026, 12, 1, 10, 0, 5, 250_000, tzinfo=UTC)
    pushed = receive(text(step=3, totalSteps=10).encode(), at)
    assert pushed.report.step == 3 and pushed == text(step=3, totalSteps=10)
    inbox = Inbox()
    inbox.put("uid", pushed)
    kept = inbox.get("uid")
    assert kept is pushed and inbox.received_at("uid") == at


def _pod(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "w", "managedFields": list(entries)}}


def _entry(manager: str, time: str, *annotations: str, subresource: str = "") -> dict[str, Any]:
    fields: dict[str, Any] = {"f:metadata": {"f:annotations": {f"f:{a}": {} for a in annotations},
                                             "f:labels": {"f:app": {}}}}  # fmt: skip
    entry = {"manager": manager, "operation": "Update", "apiVersion": "v1", "time": time,
             "fieldsType": "FieldsV1", "fieldsV1": fields}  # fmt: skip
    if subresource:
        entry["subresource"] = subresource
    return entry


def test_the_annotations_write_time_is_the_api_servers_time_of_its_owner() -> None:
    pod = _pod(
        _entry("kubetrain-operator", "2026-12-01T10:00:00Z", "kubetrain.io/workers"),
        _entry("OpenAPI-Generator", "2026-12-01T10:03:07Z", "kubetrain.io/progress"),
        _entry("kubelet", "2026-12-01T10:09:00Z", subresource="status"),
    )
    assert annotation_written_at(pod) == datetime(2026, 12, 1, 10, 3, 7, tzinfo=UTC)
    assert annotation_written_at(_pod(_entry("x", "2026-12-01T10:00:00Z", "other"))) is None
    assert annotation_written_at({"metadata": {}}) is None
    assert annotation_written_at(_pod({"manager": "x", "time": "garbage", "fieldsV1": {}})) is None
    lean = {"metadata": {"managedFields": report_write_entries(pod["metadata"]["managedFields"])}}
    assert annotation_written_at(lean) == annotation_written_at(pod)
    assert len(lean["metadata"]["managedFields"]) == 1


@pytest.mark.parametrize(
    ("received", "written", "pushed_wins"),
    [
        ("10:00:05.250", None, True),  # never annotated (or nothing records it)
        ("10:00:05.250", "10:00:04", True),
        ("10:00:05.250", "10:00:05", True),  # the same second: the channel, the first path
        ("10:00:05.250", "10:00:06", False),  # annotated after the push (the fallback)
    ],
)
def test_pushed_and_annotated_reports_are_ordered_by_clocks_the_trainer_cannot_set(
    received: str, written: str | None, pushed_wins: bool
) -> None:
    def at(clock: str) -> datetime:
        return datetime.fromisoformat(f"2026-12-01T{clock}+00:00")

    assert newer_pushed(at(received), at(written) if written else None) is pushed_wins


def _review(authenticated: bool = True, audiences: tuple[str, ...] = (CHANNEL_AUDIENCE,),
            username: str = "system:serviceaccount:team:kubetrain-trainer",
            extra: dict[str, list[str]] | None = None) -> Any:  # fmt: skip
    bound = {
        "authentication.kubernetes.io/pod-name": ["job-worker-0-a1"],
        "authentication.kubernetes.io/pod-uid": ["u-1"],
    }
    user = SimpleNamespace(username=username, extra=bound if extra is None else extra)
    return SimpleNamespace(authenticated=authenticated, audiences=list(audiences), user=user)


def test_a_token_counts_only_bound_to_a_pod_for_the_channel_audience() -> None:
    assert _identity(_review(), CHANNEL_AUDIENCE) == PodIdentity("team", "job-worker-0-a1", "u-1")
    assert _identity(_review(authenticated=False), CHANNEL_AUDIENCE) is None
    assert (
        _identity(_review(audiences=("https://kubernetes.default.svc",)), CHANNEL_AUDIENCE) is None
    )
    assert _identity(_review(username="alice"), CHANNEL_AUDIENCE) is None
    assert _identity(_review(extra={}), CHANNEL_AUDIENCE) is None  # not bound to a Pod


class FakeAuthn:
    """Answers TokenReviews from a table; counts them."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers, self.calls = answers, 0

    def create_token_review(self, body: Any) -> Any:
        self.calls += 1
        return SimpleNamespace(status=self.answers.get(body.spec.token))


def _jwt(exp: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"e30.{claims}.sig"


def test_a_review_is_kept_until_the_token_expires_and_a_refusal_briefly() -> None:
    now = [1000.0]
    good, bad = _jwt(exp=1100.0), "garbage"
    authn = FakeAuthn({good: _review()})
    reviewer = TokenReviewer(authn, keep_seconds=600, clock=lambda: now[0])  # type: ignore[arg-type]
    assert reviewer.review(good) == PodIdentity("team", "job-worker-0-a1", "u-1")
    assert reviewer.review(good) is not None and authn.calls == 1
    assert reviewer.review(bad) is None and reviewer.review(bad) is None and authn.calls == 2
    now[0] = 1011.0  # a refusal is asked again after 10 s
    assert reviewer.review(bad) is None and authn.calls == 3
    now[0] = 1100.0  # the token's own expiry, before keep_seconds ran out
    reviewer.review(good)
    assert authn.calls == 4


def test_the_review_cache_is_bounded() -> None:
    authn = FakeAuthn({})
    reviewer = TokenReviewer(authn, max_entries=3)  # type: ignore[arg-type]
    for i in range(10):
        reviewer.review(f"t{i}")
    assert len(reviewer._known) == 3


class Sink:
    def __init__(self, fail: bool = False, status: int = 503, retry_after: float = 0.0) -> None:
        self.fail, self.sent, self.status, self.retry_after = fail, [], status, retry_after
        self.tried: list[int] = []

    def send(self, text: str) -> None:
        self.tried.append(json.loads(text)["step"])
        if self.fail:
            raise ChannelError(f"answered {self.status}", self.status, self.retry_after)
        self.sent.append(json.loads(text)["step"])


def test_a_rate_limited_trainer_waits_out_retry_after_and_writes_nothing_to_its_pod() -> None:
    now = [0.0]
    push, pod = Sink(fail=True, status=429, retry_after=10), Sink()
    sink = ChannelSink(push, pod, fallback_interval=0, clock=lambda: now[0])
    for step in range(1, 6):  # a report every 5 s
        sink.send(text(step=step))
        now[0] += 5
    assert pod.sent == []  # no etcd write to get round the limit
    assert push.tried == [1, 3, 5]  # the channel again each time Retry-After has passed
    sink.send(text(step=6, state="completed"))  # a last word still reaches the Pod
    assert pod.sent == [6] and sink.refused == 3


def test_a_malformed_report_is_not_patched_onto_the_pod_instead() -> None:
    push, pod = Sink(fail=True, status=400), Sink()
    sink = ChannelSink(push, pod, fallback_interval=0, clock=lambda: 0.0)
    sink.send(text(step=1))
    sink.send(text(step=2))
    assert pod.sent == [] and push.tried == [1, 2] and sink.refused == 2


def test_the_channel_is_used_while_it_answers_and_final_words_also_go_to_the_pod() -> None:
    push, pod = Sink(), Sink()
    sink = ChannelSink(push, pod, fallback_interval=12, clock=lambda: 0.0)
    sink.send(text(step=1))
    sink.send(text(step=2))
    sink.send(text(step=3, state="completed"))
    assert push.sent == [1, 2, 3] and pod.sent == [3]


def test_a_down_channel_falls_back_at_the_annotation_pace_and_is_tried_again() -> None:
    now = [0.0]
    push, pod = Sink(fail=True), Sink()
    sink = ChannelSink(push, pod, fallback_interval=12, retry_after=30, clock=lambda: now[0])
    for step in range(1, 8):  # a report every 5 s
        sink.send(text(step=step))
        now[0] += 5
    assert pod.sent == [1, 4, 7]  # at most one annotation patch per 12 s
    assert sink.skipped == 4  # (at 30 s the channel was tried again: still down)
    push.fail = False
    now[0] = 60.0
    sink.send(text(step=8))  # 30 s after that try: tried again, and it answers
    assert push.sent == [8] and pod.sent == [1, 4, 7]


def test_a_last_word_is_never_skipped_on_the_fallback() -> None:
    now = [0.0]
    push, pod = Sink(fail=True), Sink()
    sink = ChannelSink(push, pod, fallback_interval=12, clock=lambda: now[0])
    sink.send(text(step=1))
    now[0] += 1
    sink.send(text(step=2, state="stopping"))
    assert pod.sent == [1, 2]


@pytest.mark.parametrize("state", ["completed", "failed", "stopping"])
def test_final_states_are_durable(state: str) -> None:
    pod = Sink()
    ChannelSink(Sink(), pod, fallback_interval=60, clock=lambda: 0.0).send(
        text(step=1, state=state)
    )
    assert pod.sent == [1]
