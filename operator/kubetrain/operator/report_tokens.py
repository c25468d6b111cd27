"""Who pushed a report: the Pod a report token was bound to, as the API server vouches.

The operator asks the API server once per token (a TokenReview names the Pod and its UID)
and keeps the answer until the token expires, in a bounded map, by the token's digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kubetrain.api.report import CHANNEL_AUDIENCE
from kubetrain.operator import metrics

AUDIENCE = CHANNEL_AUDIENCE
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
