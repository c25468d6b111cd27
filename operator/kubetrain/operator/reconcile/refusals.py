"""What the API server's answers mean for a job: which end it, which are retried, how often.

A request the API server refuses for the request's own sake (400 bad request, 403 forbidden
by RBAC or an admission policy, 422 invalid) gets the same answer however often it is sent:
the job fails at once, with the API server's message and the object it was about. A refusal
that passes by itself (429 throttled, 5xx, 408, a 403 for an exhausted ResourceQuota) is
retried with backoff, at most ``Settings.transient_error_limit`` times in a row for one job,
then the job fails with the last answer. A request that got no answer at all (a dropped
connection, a timeout) is the control plane's outage, not the job's: it is retried with the
same backoff and never counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses that mean "not now" rather than "not this"."""


@dataclass(frozen=True)
class Refusal:
    """Why a job cannot go on: the Failed condition's reason and message, for the
    generation of the spec that was refused (a newer spec is tried afresh)."""

    reason: str
    message: str
    generation: int | None = None


class RefusedError(Exception):
    """The API server refused an action of a pass, with what the action was about."""

    def __init__(self, what: str, reason: str, err: ApiException) -> None:
        super().__init__(f"{what}: {api_message(err)}")
        self.what, self.reason = what, reason
        self.status, self.message = err.status, api_message(err)

    @property
    def transient(self) -> bool:
        return transient(self.status, self.message)

    def describe(self) -> str:
        return f"{self.what}: {self.message}"


def api_message(err: ApiException) -> str:
    """The API server's own message from an error response."""
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.reason)


def transient(status: int | None, message: str) -> bool:
    """Whether an answer of ``status`` may change if the same request is sent again."""
    if status is None or status in TRANSIENT_STATUSES or status == 401:  # 401: a token rotates
        return True
    # Quota frees up as other Pods end; Kubernetes' own Job controller retries these too.
    return status == 403 and "exceeded quota" in message


@contextmanager
def doing(what: str, reason: str) -> Iterator[None]:
    """Name the action an API call is (``what``, and the Failed reason should it end the
    job) in the refusal it may raise. Conflicts and missing objects (409, 404) are the
    caller's to handle and pass through unchanged."""
    try:
        yield
    except ApiException as err:
        if err.status in (404, 409):
            raise
        raise RefusedError(what, reason, err) from err
