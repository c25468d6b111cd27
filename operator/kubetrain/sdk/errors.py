"""The SDK's typed errors, mapped from API server responses and from local validation.

Every error the SDK raises is a ``KubetrainError``, so scripts can catch one class; the
subclasses say what went wrong in a way a script can act on (retry, fix a field, give up).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetrain.api.base import camel


class KubetrainError(Exception):
    """Base of every SDK error; ``status`` is the HTTP code when the API server answered."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class NotFoundError(KubetrainError):
    """The TrainingJob (or the checkpoint, Pod or ConfigMap asked for) does not exist."""


class ConflictError(KubetrainError):
    """The object already exists, changed since it was read, or is in a state that forbids this."""


class PermissionDeniedError(KubetrainError):
    """The credentials were rejected (401) or lack the RBAC permission (403)."""


class PollTimeoutError(KubetrainError):
    """A wait ran out of time; the job itself is untouched and keeps running."""

    def __init__(self, name: str, timeout: float, phase: str | None, waiting_for: str):
        super().__init__(
            f"trainingjob {name!r} did not reach {waiting_for} within {timeout:g}s "
            f"(phase {phase or 'not yet set'}); it keeps running"
        )
        self.name, self.timeout, self.phase = name, timeout, phase


@dataclass(frozen=True)
class Cause:
    """One rejected field: its path (``spec.training.learningRate``) and the rule it broke."""

    field: str | None
    rule: str
    reason: str | None = None


class ValidationError(KubetrainError):
    """The spec was rejected, locally or by the API server (422); ``field`` names the culprit."""

    def __init__(
        self,
        message: str,
        causes: Sequence[Cause],
        *,
        status: int | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, status=status, reason=reason)
        self.causes = list(causes)

    @property
    def field(self) -> str | None:
        """The first rejected field's path."""
        return self.causes[0].field if self.causes else None

    @property
    def rule(self) -> str | None:
        """The first rejected field's rule, in the words of the validator."""
        return self.causes[0].rule if self.causes else None


_BY_STATUS: dict[int, type[KubetrainError]] = {
    401: PermissionDeniedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def from_response(
    status: int | None, body: str | bytes | None, fallback: str = ""
) -> KubetrainError:
    """The typed error for an API server response (a ``metav1.Status`` body, usually)."""
    parsed: dict[str, Any] = {}
    if body:
        with contextlib.suppress(ValueError):
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                parsed = loaded
    message = str(parsed.get("message") or fallback or f"the API server answered {status}")
    reason = parsed.get("reason")
    if status == 422 or reason == "Invalid":
        details = parsed.get("details") or {}
        causes = [
            Cause(c.get("field") or None, str(c.get("message", "")), c.get("reason"))
            for c in details.get("causes") or []
            if isinstance(c, dict)
        ]
        return ValidationError(message, causes, status=status, reason=reason)
    return _BY_STATUS.get(status or 0, KubetrainError)(message, status=status, reason=reason)


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """Turn the Kubernetes client's exceptions into ``KubetrainError`` subclasses."""
    try:
        yield
    except ApiException as err:
        raise from_response(err.status, err.body, str(err.reason or "")) from None
    except HTTPError as err:
        raise KubetrainError(f"cannot reach the Kubernetes API server: {err}") from None


_VALUE_ERROR = "Value error, "
_PATH_AT_START = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)+)\b")


def _wire_name(part: str) -> str:
    """A path segment as the API spells it: snake_case input keys become camelCase."""
    return camel(part) if "_" in part.strip("_") else part


def _cause(error: Any) -> Cause:
    parts = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    where = ".".join(_wire_name(p) for p in parts)
    rule = str(error["msg"]).removeprefix(_VALUE_ERROR)
    # Rules checked on a whole section name the field they are about in their message
    # ("spec.llm is required when ..."): that field is the more precise culprit.
    named = _PATH_AT_START.match(rule)
    if named and (not where or named.group(1).startswith(where)):
        where = named.group(1)
    return Cause(field=where or None, rule=rule, reason=str(error.get("type") or "") or None)


def from_pydantic(err: pydantic.ValidationError) -> ValidationError:
    """A local validation failure, shaped like the API server's 422 (field and rule)."""
    causes = [_cause(e) for e in err.errors()]
    first = causes[0]
    named = first.field and first.rule.startswith(first.field)
    message = f"{first.field}: {first.rule}" if first.field and not named else first.rule
    if len(causes) > 1:
        message += f" (and {len(causes) - 1} more)"
    return ValidationError(message, causes, reason="Invalid")
