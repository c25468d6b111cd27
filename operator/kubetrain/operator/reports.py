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
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client

from kubetrain.api.report import CHANNEL_AUDIENCE, CHANNEL_PATH, MAX_REPORT_BYTES
from kubetrain.operator import metrics

log = logging.getLogger(__name__)

AUDIENCE, PATH = CHANNEL_AUDIENCE, CHANNEL_PATH
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class PodIdentity:
    """The Pod a report token was bound to, as the API server vouches."""

    namespace: str
    name: str
    uid: str


def _expiry(token: str) -> float | None:
    """The token's ``exp`` claim (unverified: it only bounds how long a review is kept)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


class TokenReviewer:
    """Who a token belongs to, asked of the API server once per token and kept a while."""

    def __init__(
        self,
        authn: client.AuthenticationV1Api,
        *,
        audience: str = AUDIENCE,
        keep_seconds: float = 600.0,
        max_entries: int = 20_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authn, self.audience = authn, audience
        self.keep_seconds, self.max_entries, self._clock = keep_seconds, max_entries, clock
        self._known: OrderedDict[str, tuple[PodIdentity | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, token: str) -> tuple[bool, PodIdentity | None]:
        """(known, identity) without asking the API server."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            entry = self._known.get(digest)
            if entry is None or entry[1] <= self._clock():
                return False, None
            self._known.move_to_end(digest)
            return True, entry[0]

    def review(self, token: str) -> PodIdentity | None:
        """The token's Pod, or None when the API server does not vouch for it."""
        known, identity = self.cached(token)
        if known:
            return identity
        answer = self.authn.create_token_review(
            client.V1TokenReview(
                spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience])
            )
        )
        metrics.TOKEN_REVIEWS.inc()
        identity = _identity(answer.status, self.audience)
        now = self._clock()
        until = now + (self.keep_seconds if identity else 10.0)  # a refusal is asked again soon
        if identity and (exp := _expiry(token)) is not None:
            until = min(until, exp)
        with self._lock:
            self._known[hashlib.sha256(token.encode()).hexdigest()] = (identity, until)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)
        return identity


def _identity(status: Any, audience: str) -> PodIdentity | None:
    if status is None or not status.authenticated or status.user is None:
        return None
    if audience not in (status.audiences or []):
        return None
    parts = (status.user.username or "").split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return None
    extra = status.user.extra or {}
    names, uids = extra.get(_POD_NAME) or [], extra.get(_POD_UID) or []
    if not names or not uids:
        return None  # not bound to a Pod
    return PodIdentity(namespace=parts[2], name=names[0], uid=uids[0])


_SIGNIFICANT_FIELDS = ("state", "epoch", "totalEpochs", "totalSteps", "model", "message")


def _significant(old: str | None, new: str) -> bool:
    """Whether ``new`` says more than progress: a state, epoch, checkpoint or model change."""
    if old is None:
        return True
    try:
        before, after = json.loads(old), json.loads(new)
    except ValueError:
        return True  # the reconciler reads it at once and says what is wrong with it
    if not isinstance(before, dict) or not isinstance(after, dict):
        return True
    if any(before.get(f) != after.get(f) for f in _SIGNIFICANT_FIELDS):
        return True
    return bool(before.get("checkpoints") != after.get("checkpoints"))


class Inbox:
    """The newest pushed report of each worker Pod, by Pod UID."""

    def __init__(self) -> None:
        self._reports: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, uid: str, text: str) -> bool:
        """Keep ``text`` as the Pod's report; True when it is a significant change."""
        with self._lock:
            old = self._reports.get(uid)
            self._reports[uid] = text
        return _significant(old, text)

    def get(self, uid: str) -> str | None:
        with self._lock:
            return self._reports.get(uid)

    def drop(self, uid: str) -> None:
        with self._lock:
            self._reports.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)


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


Accept = Callable[[PodIdentity, str], int]
"""Takes a vouched-for report; returns the HTTP status to answer with."""


class ReportServer:
    """HTTPS on ``host:port`` for trainers' reports, in a thread with its own event loop."""

    def __init__(
        self,
        listen: str,
        context: ssl.SSLContext,
        reviewer: TokenReviewer,
        accept: Accept,
        active: Callable[[], bool],
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "0.0.0.0", int(port)
        self.context, self.reviewer, self.accept, self.active = context, reviewer, accept, active
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
        text = await request.text()
        status = self.accept(identity, text)
        metrics.PUSHED_REPORTS.labels(str(status)).inc()
        return _answer(status, "")


def _answer(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)
