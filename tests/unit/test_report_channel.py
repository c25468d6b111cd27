"""The report channel's pure parts: which pushed reports are mirrored at once, whose token
it is, and how a trainer falls back to its Pod when the channel is down."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest

from kubetrain.api.report import CHANNEL_AUDIENCE
from kubetrain.operator.reports import Inbox, PodIdentity, TokenReviewer, _identity
from kubetrain.trainer.reporter import ChannelError, ChannelSink


def text(**fields: Any) -> str:
    return json.dumps({"version": 1, "time": "2026-12-01T10:00:00Z", **fields})


def test_only_more_than_progress_is_significant() -> None:
    inbox = Inbox()
    assert inbox.put("uid", text(step=1, epoch=0, state="running"))  # the first one
    assert not inbox.put("uid", text(step=2, epoch=0, state="running", loss=0.5))
    assert inbox.put("uid", text(step=3, epoch=1, state="running"))  # an epoch ended
    assert inbox.put("uid", text(step=3, epoch=1, checkpoints=[{"id": "step-3"}]))
    assert inbox.put("uid", text(step=4, epoch=1, checkpoints=[{"id": "step-3"}], state="stopping"))
    assert inbox.put("uid", "not json")  # read at once, so the Warning comes at once
    assert inbox.get("uid") == "not json" and len(inbox) == 1
    inbox.drop("uid")
    assert inbox.get("uid") is None and len(inbox) == 0


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
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.sent = fail, []

    def send(self, text: str) -> None:
        if self.fail:
            raise ChannelError("answered 503 not the leading replica")
        self.sent.append(json.loads(text)["step"])


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
