"""``kubectl train watch``: progress of one or all jobs until they settle, driven by a watch.

On a terminal the bars are redrawn in place at every change; in a pipe each change is one
plain line (``kubectl get -w`` style), so the output can be logged or parsed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

from kubetrain.api import Phase, TrainingJob
from kubetrain.cli import fmt, views
from kubetrain.cli.plot import sparkline
from kubetrain.cli.term import Style
from kubetrain.sdk import NotFoundError

PLAIN_HEADERS = ("NAME", "PHASE", "PROGRESS", "EPOCH", "STEP", "LOSS", "ETA")
FRAME_HEADERS = ("NAME", "PHASE", "PROGRESS", "EPOCH", "STEP", "LOSS", "TREND", "ETA")
_NAME_MAX = 30
TREND = 12
"""Losses in the watch's sparkline: the last this many the job reported while watched."""
_FIXED = 9 + 7 + 7 + 11 + 8 + TREND + 7 + 3 * 7  # the other columns and the gaps between them
_BAR_MIN, _BAR_MAX = 10, 40


def settled(job: TrainingJob) -> bool:
    """Nothing more will happen without a user: Completed, Failed, or Stopped on request."""
    phase = job.status.phase
    return phase in (Phase.COMPLETED, Phase.FAILED) or (phase is Phase.STOPPED and job.spec.suspend)


def label(job: TrainingJob, namespaces: bool) -> str:
    name = job.metadata.name or fmt.NONE
    return f"{job.metadata.namespace}/{name}" if namespaces else name


def plain_line(job: TrainingJob, namespaces: bool) -> str:
    """One job's state as whitespace-separated tokens, in PLAIN_HEADERS order."""
    return " ".join(
        [
            label(job, namespaces),
            job.status.phase.value if job.status.phase else fmt.NONE,
            fmt.percent(views.percentage(job)),
            views.epoch(job),
            views.step(job),
            views.loss(job),
            views.eta(job),
        ]
    )


def frame(
    jobs: Sequence[TrainingJob],
    style: Style,
    width: int,
    namespaces: bool,
    trends: Mapping[str, Sequence[float]] | None = None,
) -> list[str]:
    """The screen for a terminal: a table whose PROGRESS column is a bar fitted to ``width``,
    and the sparkline of the losses seen while watching (``trends``, by job label)."""
    trends = trends or {}
    names = [label(j, namespaces)[:_NAME_MAX] for j in jobs]
    name_width = max([4, *(len(n) for n in names)])
    bar_width = min(max(width - _FIXED - name_width, _BAR_MIN), _BAR_MAX)
    rows = [
        [
            name,
            style.phase(job.status.phase),
            views.progress_text(job, style, bar_width),
            views.epoch(job),
            views.step(job),
            views.loss(job),
            sparkline(trends.get(label(job, True), ()), unicode=style.unicode) or fmt.NONE,
            views.eta(job),
        ]
        for name, job in zip(names, jobs, strict=True)
    ]
    return fmt.table(FRAME_HEADERS, rows)


class Screen:
    """Draws successive frames over each other (terminal) or prints changed lines (pipe)."""

    def __init__(self, out: TextIO, style: Style, namespaces: bool) -> None:
        self.out, self.style, self.namespaces = out, style, namespaces
        self._height = 0
        self._printed: dict[str, str] = {}
        self._trends: dict[str, list[float]] = {}
        self._steps: dict[str, float] = {}

    def _remember(self, jobs: Sequence[TrainingJob]) -> None:
        """Each job's loss, once per step it reports: the watch's sparkline."""
        for job in jobs:
            metrics, progress = job.status.metrics, job.status.progress
            if metrics is None or metrics.current_loss is None or progress is None:
                continue
            seen = self._trends.setdefault(label(job, True), [])
            step = float(progress.current_step or 0)
            if not seen or self._steps.get(label(job, True)) != step:
                seen.append(metrics.current_loss)
                del seen[:-TREND]
                self._steps[label(job, True)] = step

    def show(self, jobs: Sequence[TrainingJob], footer: str) -> None:
        if self.style.bars:
            width = shutil.get_terminal_size((100, 24)).columns
            self._remember(jobs)
            table = frame(jobs, self.style, width, self.namespaces, self._trends)
            lines = [*table, "", footer]
            self._redraw([fmt.fit(line, width - 1) for line in lines])
        else:
            self._print_changes(jobs)
        self.out.flush()

    def _redraw(self, lines: list[str]) -> None:
        if self._height:
            self.out.write(f"\x1b[{self._height}F")  # back to the first line of the last frame
        for line in lines:
            self.out.write(f"\x1b[2K{line}\n")
        self.out.write("\x1b[J")  # clear what a longer previous frame left below
        self._height = len(lines)

    def _print_changes(self, jobs: Iterable[TrainingJob]) -> None:
        if not self._printed:
            self.out.write(" ".join(PLAIN_HEADERS) + "\n")
        for job in jobs:
            line = plain_line(job, self.namespaces)
            key = label(job, True)
            if self._printed.get(key) != line:
                self._printed[key] = line
                self.out.write(line + "\n")


def run(
    snapshots: Iterable[dict[str, TrainingJob]],
    out: TextIO,
    style: Style,
    *,
    name: str | None,
    where: str,
    namespaces: bool,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int | None:
    """Show every snapshot until all jobs settle: 0, or 1 if one Failed; None if cut short.

    ``where`` names the namespace (or "all namespaces") for the footer and messages.
    """
    screen = Screen(out, style, namespaces)
    for snapshot in snapshots:
        jobs = sorted(snapshot.values(), key=lambda j: label(j, True))
        if not jobs:
            if name is not None:
                raise NotFoundError(f'trainingjob "{name}" not found in {where}')
            out.write(f"No TrainingJobs in {where}.\n")
            return 0
        active = sum(not settled(j) for j in jobs)
        stamp = clock().strftime("%H:%M:%S")
        screen.show(jobs, f"{active} of {len(jobs)} job(s) active in {where} at {stamp}")
        if not active:
            return 1 if any(j.status.phase is Phase.FAILED for j in jobs) else 0
    return None
