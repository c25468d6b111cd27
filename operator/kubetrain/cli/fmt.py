"""Plain-text formatting of durations, ages, money, numbers and tables; pure.

Every value renders as one token without spaces ("-" when unknown) so that piped output
splits cleanly on whitespace, as ``kubectl get`` output does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

NONE = "-"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``1h02m``, ``2d03h``: two units at most, like kubectl's ages."""
    if seconds is None or seconds < 0:
        return NONE
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def age(since: datetime | None, now: datetime) -> str:
    """Time since ``since`` in kubectl's style: one unit (``5s``, ``3m``, ``2h``, ``4d``)."""
    if since is None:
        return NONE
    seconds = max((now - since).total_seconds(), 0)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def money(usd: float | None) -> str:
    """``$1.23``; four decimals under a cent so that tiny CPU costs are not shown as zero."""
    if usd is None:
        return NONE
    return f"${usd:.4f}" if 0 < usd < 0.01 else f"${usd:,.2f}"


def number(value: float | None) -> str:
    """A metric such as a loss: four significant digits."""
    return NONE if value is None else f"{value:.4g}"


def percent(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}%"


def fraction(current: int | None, total: int | None) -> str:
    """``3/10``; ``3`` when the total is unknown."""
    if current is None and not total:
        return NONE
    return f"{current or 0}/{total}" if total else str(current or 0)


def size(num_bytes: int | None) -> str:
    """Bytes in binary units: ``512B``, ``1.5KiB``, ``2.0GiB``."""
    if num_bytes is None:
        return NONE
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def timestamp(when: datetime | None) -> str:
    """RFC 3339 in UTC, to the second."""
    if when is None:
        return NONE
    if when.utcoffset() is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def visible_len(text: str) -> int:
    """Length on screen: ANSI colour codes take no room."""
    return len(_ANSI.sub("", text))


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` cells (losing its colours if it must be cut), so it never wraps."""
    if visible_len(line) <= width:
        return line
    return _ANSI.sub("", line)[: max(width, 0)]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Columns padded to their widest cell, three spaces apart (the last one unpadded)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [
            cell + " " * (widths[i] - visible_len(cell)) if i < len(row) - 1 else cell
            for i, cell in enumerate(row)
        ]
        lines.append(indent + "   ".join(cells).rstrip())
    return lines
