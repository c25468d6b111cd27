"""Terminal styling: colours and progress bars on a terminal, plain text everywhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TextIO

from kubetrain.api import Phase

_CODES = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "dim": "2",
    "bold": "1",
}

PHASE_COLOURS = {
    Phase.PENDING: "dim",
    Phase.QUEUED: "yellow",
    Phase.RUNNING: "cyan",
    Phase.STOPPING: "magenta",
    Phase.STOPPED: "magenta",
    Phase.COMPLETED: "green",
    Phase.FAILED: "red",
}

_EIGHTHS = " ▏▎▍▌▋▊▉"
FULL, EMPTY = "█", "░"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (``isatty``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def wants_colour(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set or TERM is dumb."""
    return (
        is_terminal(stream)
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM", "") != "dumb"
    )


def speaks_utf8(stream: TextIO) -> bool:
    """Whether block characters can be written to ``stream``."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding == "utf8"


@dataclass(frozen=True)
class Style:
    """How to render for one output stream: ``colour`` codes and ``bars`` only on a terminal."""

    colour: bool = False
    bars: bool = False
    unicode: bool = True
    """Block characters for bars; ASCII (``#`` and ``-``) where the terminal lacks UTF-8."""

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        return cls(
            colour=wants_colour(stream), bars=is_terminal(stream), unicode=speaks_utf8(stream)
        )

    def bar(self, percentage: float | None, width: int) -> str:
        """A bar in the characters this terminal can show."""
        drawn = bar(percentage, width)
        if self.unicode:
            return drawn
        return "".join("#" if c == FULL else "-" if c == EMPTY else ":" for c in drawn)

    def paint(self, text: str, colour: str | None) -> str:
        if not self.colour or not colour or colour not in _CODES:
            return text
        return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"

    def phase(self, phase: Phase | None) -> str:
        """The phase name, coloured by how things stand (red Failed, green Completed...)."""
        if phase is None:
            return "-"
        return self.paint(phase.value, PHASE_COLOURS.get(phase))


def bar(percentage: float | None, width: int) -> str:
    """A progress bar ``width`` cells wide, with eighth-cell resolution.

    Unknown progress renders as an empty bar; values are clamped to 0..100.
    """
    width = max(width, 1)
    share = min(max((percentage or 0.0) / 100, 0.0), 1.0)
    eighths = round(share * width * 8)
    full, partial = divmod(eighths, 8)
    text = FULL * full
    if full < width:
        text += (_EIGHTHS[partial] if partial else EMPTY) + EMPTY * (width - full - 1)
    return text


def filled_cells(rendered: str) -> int:
    """How many cells of a rendered bar are full (for tests and summaries)."""
    return rendered.count(FULL)
