"""Curves in a terminal: ``kubectl train plot`` (a chart of a metric against step) and the
sparkline of recent loss in ``kubectl train watch``."""

from __future__ import annotations

from collections.abc import Sequence

SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-~=*#@"


def sparkline(values: Sequence[float], *, unicode: bool = True) -> str:
    """One character per value, its height the value's place between the lowest and highest."""
    if not values:
        return ""
    marks = SPARKS if unicode else ASCII_SPARKS
    low, high = min(values), max(values)
    span = high - low
    return "".join(
        marks[0 if span == 0 else round((v - low) / span * (len(marks) - 1))] for v in values
    )


def chart(
    points: Sequence[tuple[float, float]],
    *,
    width: int = 60,
    height: int = 12,
    title: str = "",
    unicode: bool = True,
) -> list[str]:
    """``points`` (x, y) as a chart ``width`` columns by ``height`` rows, with its y range on
    the left and its x range below. Each column shows the mean of the points that fall in it."""
    if not points:
        return [f"{title}: no data yet" if title else "no data yet"]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    columns: list[list[float]] = [[] for _ in range(width)]
    for x, y in points:
        at = 0 if x_high == x_low else round((x - x_low) / (x_high - x_low) * (width - 1))
        columns[at].append(y)
    dot = "•" if unicode else "*"
    grid = [[" "] * width for _ in range(height)]
    for at, column in enumerate(columns):
        if not column:
            continue
        y = sum(column) / len(column)
        row = 0 if y_high == y_low else round((y_high - y) / (y_high - y_low) * (height - 1))
        grid[row][at] = dot
    top, bottom = _number(y_high), _number(y_low)
    pad = max(len(top), len(bottom))
    lines = [title] if title else []
    for i, cells in enumerate(grid):
        axis = top if i == 0 else bottom if i == height - 1 else ""
        lines.append(f"{axis:>{pad}} |{''.join(cells)}")
    left, right = _number(x_low), _number(x_high)
    lines.append(" " * pad + " +" + "-" * width)
    lines.append(" " * (pad + 2) + left + right.rjust(width - len(left)))
    return lines


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"
