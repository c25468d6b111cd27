"""Exit codes and the termination message: how a trainer tells the operator how it ended.

The operator reads the container's exit code (0 completed, ``EXIT_STOPPED`` checkpointed
and resumable, ``EXIT_PERMANENT`` failed for a reason no retry cures, 1 failed and worth
another attempt) and its termination message (one line: the reason or a summary; on
completion a ``Termination`` as JSON). A trainer process ends through ``exit_process``, so it
exits with the code of what it did whatever a thread still waiting on the network does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, permanent_message
from kubetrain.trainer.fences import SupersededError

EXIT_COMPLETED = 0
EXIT_FAILED = 1
TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096  # the kubelet keeps at most this much of the termination message

log = logging.getLogger("kubetrain.trainer")

__all__ = [
    "EXIT_COMPLETED",
    "EXIT_FAILED",
    "EXIT_PERMANENT",
    "EXIT_STOPPED",
    "Outcome",
    "TrainerError",
    "configure_logging",
    "exit_process",
    "run_entry",
    "termination_log_path",
    "write_termination_message",
]


class TrainerError(Exception):
    """A failure the user must fix (bad config, missing or too little data): no retry can cure
    it, so the trainer exits ``EXIT_PERMANENT`` with ``<reason>: <message>``, no traceback."""

    reason = "ConfigurationError"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the exit code and the one-line termination message."""

    code: int
    message: str

    @classmethod
    def completed(cls, message: str) -> Outcome:
        return cls(EXIT_COMPLETED, message)

    @classmethod
    def stopped(cls, message: str) -> Outcome:
        return cls(EXIT_STOPPED, message)

    @classmethod
    def failed(cls, message: str) -> Outcome:
        return cls(EXIT_FAILED, message)

    @classmethod
    def permanent(cls, reason: str, message: str) -> Outcome:
        return cls(EXIT_PERMANENT, permanent_message(reason, message))


def termination_log_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the termination message goes: ``KUBETRAIN_TERMINATION_LOG`` or the kubelet's file."""
    return Path(environ.get("KUBETRAIN_TERMINATION_LOG") or TERMINATION_LOG)


def one_line(message: str) -> str:
    """Collapse a message to a single line that fits the kubelet's termination-message limit."""
    text = " ".join(message.split())
    data = text.encode()
    if len(data) > MAX_MESSAGE_BYTES:
        text = data[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "..."
    return text


def write_termination_message(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Write the one-line message where the kubelet reads it; never raises."""
    path = termination_log_path(environ)
    try:
        path.write_text(one_line(message) + "\n")
    except OSError as err:
        log.warning("cannot write the termination message to %s: %s", path, err)


def configure_logging(rank: int = 0) -> None:
    """Plain line logging to stderr, tagged with the process's rank (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_kubetrain", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    )
    handler._kubetrain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_entry(main: Callable[[], Outcome], environ: Mapping[str, str] = os.environ) -> int:
    """Run a trainer's main, turn any way it ends into an exit code and a termination message."""
    try:
        outcome = main()
    except SupersededError as err:  # a newer attempt owns the volume: not this one's failure
        outcome = Outcome.stopped(str(err))
        log.warning("%s", outcome.message)
    except TrainerError as err:
        outcome = Outcome.permanent(err.reason, str(err))
        log.error("%s", outcome.message)
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (None, 0):
            raise
        traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        outcome = Outcome.failed(f"{type(err).__name__}: {first}" if first else type(err).__name__)
    write_termination_message(outcome.message, environ)
    return outcome.code


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` now, its output flushed: without the interpreter's
    shutdown, which can abort (SIGABRT, exit 134) while a thread is still blocked on the
    network (a report to an API server that does not answer) and never waits for one."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to add
            stream.flush()
    os._exit(code)
