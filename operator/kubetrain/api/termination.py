"""A completed trainer's termination message: how the operator tells a completed run from a
failure when no report arrived.

A trainer that finished writes, before it tries to deliver its final report, one line of
JSON where the kubelet reads the container's termination message (``/dev/termination-log``,
at most 4 KiB kept): that it completed, the final step and the model's location and digest.
Other endings keep their one-line text (exit 78: ``<Reason>: <message>``, ``read_permanent``).
The operator reads the message with ``parse_termination``, as untrusted input, like a report.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from kubetrain.api.report import Count, Identifier, ReportedModel, _Model

TERMINATION_FORMAT: Literal["termination/v1"] = "termination/v1"
"""The value of the ``kubetrain`` key that marks a termination message as this model."""
MAX_TERMINATION_BYTES = 4096
"""What the kubelet keeps of a termination message."""


class Termination(_Model):
    """How a trainer ended, as it says in its termination message."""

    kubetrain: Literal["termination/v1"] = TERMINATION_FORMAT
    state: Literal["completed"] = "completed"
    message: Annotated[str, Field(max_length=1024)] = ""
    step: Count = 0
    total_steps: Count = 0
    epoch: Count = 0
    total_epochs: Count = 0
    model: ReportedModel | None = None
    """Where the trained model is (on the volume; ``uri`` where it was published)."""
    latest_checkpoint: Identifier | None = None


def encode_termination(termination: Termination) -> str:
    """One line of JSON within the kubelet's limit (the message, then the upload error and the
    published URI are shortened or left out to fit)."""
    for candidate in _shorter(termination):
        text = candidate.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= MAX_TERMINATION_BYTES:
            return text
    raise ValueError("a termination message cannot fit the kubelet's limit")


def _shorter(termination: Termination) -> list[Termination]:
    brief = termination.model_copy(update={"message": termination.message[:200]})
    model = brief.model
    if model is None:
        return [termination, brief]
    no_error = brief.model_copy(update={"model": model.model_copy(update={"upload_error": ""})})
    bare = brief.model_copy(
        update={"model": model.model_copy(update={"upload_error": "", "uri": ""})}
    )
    return [termination, brief, no_error, bare]


def parse_termination(text: str) -> Termination | None:
    """The termination a trainer wrote, or None when ``text`` is not one (a plain message, a
    log tail, anything malformed, out of range or over the size limit)."""
    if len(text.encode(errors="replace")) > MAX_TERMINATION_BYTES:
        return None
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict) or raw.get("kubetrain") != TERMINATION_FORMAT:
        return None
    try:
        termination = Termination.model_validate(raw)
    except ValidationError:
        return None
    if termination.total_steps and termination.step > termination.total_steps:
        return None
    return termination


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")
