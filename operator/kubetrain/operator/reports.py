"""The report channel: trainers push progress to the operator instead of writing to etcd.

A trainer POSTs its report over HTTPS with a service-account token that the kubelet bound to
its Pod and issued for the audience ``kubetrain.io/report`` (a projected volume; the token is
useless against the API server). The operator asks the API server whose token it is, once per
token (a TokenReview names the Pod and its UID), and keeps the newest report of each Pod in
memory, where the reconciler reads it as it reads the Pod's annotation. A report costs no etcd
write, so trainers can report often while status is written at its own pace.

A trainer may report only for its own Pod, exactly as the admission policy holds the
annotation path to: the Pod comes from the token, never from the request. When the channel
is down (standby replica, operator restarting) a trainer falls back to its Pod's annotation.

What a trainer sends stays untrusted: each report is decoded at the door (400 with the
reason, and one Warning per distinct reason), each Pod pushes within a token bucket (429),
and reports are ordered by when the operator and the API server received them, never by
the trainer's clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from kubetrain.api.report import (
    ANNOTATION,
    CHANNEL_PATH,
    MAX_REPORT_BYTES,
    ProgressReport,
    ReportError,
)
from kubetrain.operator import metrics
from kubetrain.operator.report_door import PodBuckets, Pushed, Warned, receive
from kubetrain.operator.report_tokens import AUDIENCE, PodIdentity, TokenReviewer

__all__ = [
    "AUDIENCE",
    "PATH",
    "Accept",
    "Inbox",
    "PodIdentity",
    "Pushed",
    "ReportServer",
    "TokenReviewer",
    "Warn",
    "annotation_written_at",
    "bare_context",
    "newer_pushed",
    "report_write_entries",
    "server_context",
]

log = logging.getLogger(__name__)

PATH = CHANNEL_PATH

_SIGNIFICANT_FIELDS = ("state", "epoch", "total_epochs", "total_steps", "model", "message")


def _significant(old: ProgressReport | None, new: ProgressReport) -> bool:
    """Whether ``new`` says more than progress: a first report, or a state, epoch, totals,
    model or message change. The checkpoint list is ``_new_latest``'s."""
    if old is None:
        return True
    return any(getattr(old, f) != getattr(new, f) for f in _SIGNIFICANT_FIELDS)


def _new_latest(old: ProgressReport | None, new: ProgressReport) -> bool:
    """Whether ``new`` names a newly committed checkpoint as its latest: the last of its
    list (the trainer lists them in commit order), one ``old`` did not list."""
    if not new.checkpoints:
        return False
    known = {c.id for c in old.checkpoints} if old is not None else set()
    return new.checkpoints[-1].id not in known


@dataclass(frozen=True)
class _Kept:
    text: Pushed
    report: ProgressReport
    received_at: datetime


class Inbox:
    """The newest pushed report of each worker Pod, by Pod UID, with when it came.

    ``put`` says whether a report is significant, to be mirrored into status at once
    instead of at the status throttle's pace: a first report; a state, epoch,
    totals, model or message change; or a newly committed latest checkpoint, at most once
    per ``checkpoint_seconds`` per Pod. Any other change of the checkpoint list (one
    deleted, the list reordered, an older one listed again, or a new one within the
    interval) waits for the throttled write, as progress does, so a trainer that keeps
    changing its list cannot drive status writes at its push rate.
    """

    def __init__(
        self,
        *,
        checkpoint_seconds: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checkpoint_seconds, self._clock = checkpoint_seconds, clock
        self._reports: dict[str, _Kept] = {}
        self._checkpoint_at: dict[str, float] = {}  # when a Pod's new checkpoint was last mirrored
        self._lock = threading.Lock()

    def put(self, uid: str, pushed: Pushed) -> bool:
        """Keep ``pushed`` (decoded at the channel's door) as the Pod's report; True when it
        is a significant change."""
        kept = _Kept(pushed, pushed.report, pushed.received_at)
        now = self._clock()
        with self._lock:
            old = self._reports.get(uid)
            self._reports[uid] = kept
            before = old.report if old is not None else None
            if _significant(before, kept.report):
                if _new_latest(before, kept.report):
                    self._checkpoint_at[uid] = now
                return True
            last = self._checkpoint_at.get(uid)
            if _new_latest(before, kept.report) and (
                last is None or now - last >= self.checkpoint_seconds
            ):
                self._checkpoint_at[uid] = now
                return True
            return False

    def get(self, uid: str) -> Pushed | None:
        """The Pod's newest pushed report, as the door decoded it."""
        with self._lock:
            kept = self._reports.get(uid)
        return kept.text if kept is not None else None

    def received_at(self, uid: str) -> datetime | None:
        """When the operator received the Pod's newest pushed report (its own clock)."""
        with self._lock:
            kept = self._reports.get(uid)
        return kept.received_at if kept is not None else None

    def drop(self, uid: str) -> None:
        with self._lock:
            self._reports.pop(uid, None)
            self._checkpoint_at.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)


def _report_fields(entry: Mapping[str, Any], annotation: str) -> bool:
    """Whether a managedFields entry owns ``annotation``."""
    fields = entry.get("fieldsV1") or {}
    annotations = (fields.get("f:metadata") or {}).get("f:annotations") or {}
    return f"f:{annotation}" in annotations


def annotation_written_at(pod: Mapping[str, Any], annotation: str = ANNOTATION) -> datetime | None:
    """When the API server last saw the Pod's report annotation written; None when nothing
    records it (never written, or the Pod's managedFields are not at hand).

    The time of the managedFields entry that owns the annotation: the API server sets it
    when that field manager last changed a field it owns (to the second). The trainer's
    writes are held to this one annotation by the admission policy, so its entry's time is
    the annotation's write time, and the trainer cannot set it."""
    meta = pod.get("metadata") or {}
    times = [
        _utc(entry.get("time"))
        for entry in meta.get("managedFields") or []
        if isinstance(entry, Mapping) and _report_fields(entry, annotation)
    ]
    return max((t for t in times if t is not None), default=None)


def report_write_entries(
    managed_fields: list[Mapping[str, Any]] | None, annotation: str = ANNOTATION
) -> list[dict[str, Any]]:
    """The managedFields entries that own the report annotation, cut to that field and
    their time: what ``annotation_written_at`` reads, for a cache that drops the rest."""
    owned: dict[str, Any] = {"f:metadata": {"f:annotations": {f"f:{annotation}": {}}}}
    return [
        {"manager": e.get("manager", ""), "time": e.get("time"), "fieldsV1": owned}
        for e in managed_fields or []
        if isinstance(e, Mapping) and _report_fields(e, annotation)
    ]


def newer_pushed(received_at: datetime, annotation_written_at: datetime | None) -> bool:
    """Whether a pushed report received at ``received_at`` (the operator's clock) is newer
    than the Pod's annotated report, written at ``annotation_written_at`` (the API
    server's, to the second): neither is the trainer's clock.

    The API server keeps whole seconds, so a push within the annotation's second counts as
    newer: the channel is the trainer's first path, and a trainer writes both in one second
    only for its last word, which it sends to both."""
    if annotation_written_at is None:
        return True
    return received_at.replace(microsecond=0) >= annotation_written_at


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def bare_context() -> ssl.SSLContext:
    """A server context with no certificate loaded yet (TLS 1.2 or later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """The serving certificate (``tls.crt``, ``tls.key`` in ``tls_dir``)."""
    context = bare_context()
    context.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
    return context


Accept = Callable[[PodIdentity, Pushed], int]
"""Takes a vouched-for, decoded report; returns the HTTP status to answer with."""
Warn = Callable[[PodIdentity, str], None]
"""Told once per distinct reason a Pod's report was refused for (to post a Warning)."""


class ReportServer:
    """HTTPS on ``host:port`` for trainers' reports, in a thread with its own event loop.

    A report is decoded at the door: a bad one is answered 400 with the field and reason
    (``warn`` is told once per distinct reason per Pod), an oversized one 413, and a Pod
    that pushes past its bucket (``burst`` at once, ``rate`` a second) 429 with Retry-After.
    Only a decoded report reaches ``accept``."""

    def __init__(
        self,
        listen: str,
        context: ssl.SSLContext,
        reviewer: TokenReviewer,
        accept: Accept,
        active: Callable[[], bool],
        *,
        warn: Warn | None = None,
        rate: float = 1.0,
        burst: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "0.0.0.0", int(port)
        self.context, self.reviewer, self.accept, self.active = context, reviewer, accept, active
        self.warn = warn
        self.buckets = PodBuckets(rate, burst, clock=clock)
        self.warned = Warned()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="report-server", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the report server did not start on {self.host}:{self.port}")
        if self._error is not None:
            raise RuntimeError(
                f"the report server cannot listen on {self.host}:{self.port}: {self._error}"
            )

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=MAX_REPORT_BYTES + 1024)
        app.router.add_post(PATH, self._post)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.context)
            loop.run_until_complete(site.start())
        except OSError as err:
            self._error = err
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _post(self, request: web.Request) -> web.Response:
        if not self.active():
            return _answer(503, "not the leading replica")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _answer(401, "a bearer token bound to the trainer's Pod is required")
        known, identity = self.reviewer.cached(token)
        if not known:
            try:
                identity = await asyncio.get_running_loop().run_in_executor(
                    None, self.reviewer.review, token
                )
            except Exception as err:  # the API server is away: the trainer falls back
                log.warning("token review failed: %s", err)
                return _answer(503, "cannot review the token now")
        if identity is None:
            return _answer(401, f"the token is not a Pod-bound token for {AUDIENCE}")
        wait = self.buckets.take(identity.uid)
        if wait > 0:
            return _counted(429, "too many reports from this Pod", math.ceil(wait))
        too_large = f"report is over the {MAX_REPORT_BYTES}-byte limit"
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(identity, 413, too_large)
        if len(body) > MAX_REPORT_BYTES:
            return self._refuse(identity, 413, too_large)
        try:
            pushed = receive(body, datetime.now(UTC))
        except ReportError as err:
            return self._refuse(identity, 400, str(err))
        return _counted(self.accept(identity, pushed), "")

    def _refuse(self, identity: PodIdentity, status: int, reason: str) -> web.Response:
        """Answer a bad report with its reason; warn of each distinct reason once per Pod."""
        if self.warn is not None and self.warned.first(identity.uid, reason):
            asyncio.get_running_loop().run_in_executor(None, _warn, self.warn, identity, reason)
        return _counted(status, reason)


def _warn(warn: Warn, identity: PodIdentity, reason: str) -> None:
    try:
        warn(identity, reason)
    except Exception:  # a Warning not posted loses no report; the trainer got the reason
        log.exception("cannot warn of Pod %s/%s's bad report", identity.namespace, identity.name)


def _counted(status: int, message: str, retry_after: int | None = None) -> web.Response:
    metrics.PUSHED_REPORTS.labels(str(status)).inc()
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=status, text=message, headers=headers)


def _answer(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)
