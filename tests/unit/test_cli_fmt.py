"""Plain-text formatting and progress bars of the plugin."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kubetrain.api import Phase
from kubetrain.cli import fmt
from kubetrain.cli.term import EMPTY, FULL, Style, bar, filled_cells, speaks_utf8, wants_colour


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-1, "-"),
        (0, "0s"),
        (44.6, "45s"),
        (185, "3m05s"),
        (3720, "1h02m"),
        (2 * 86_400 + 3 * 3600 + 59, "2d03h"),
    ],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(minutes=3, seconds=30), "3m"),
        (timedelta(minutes=90), "90m"),
        (timedelta(hours=5), "5h"),
        (timedelta(days=3), "3d"),
        (timedelta(seconds=-10), "0s"),  # clock skew is not a negative age
    ],
)
def test_ages_like_kubectl(ago: timedelta, text: str) -> None:
    assert fmt.age(NOW - ago, NOW) == text
    assert fmt.age(None, NOW) == "-"


@pytest.mark.parametrize(
    ("usd", "text"),
    [(None, "-"), (0, "$0.00"), (0.0041, "$0.0041"), (12.5, "$12.50"), (12345.678, "$12,345.68")],
)
def test_money(usd: float | None, text: str) -> None:
    assert fmt.money(usd) == text


def test_numbers_fractions_and_sizes() -> None:
    assert fmt.number(1.23456789) == "1.235" and fmt.number(None) == "-"
    assert fmt.percent(50) == "50.0%" and fmt.percent(None) == "-"
    assert fmt.fraction(3, 10) == "3/10" and fmt.fraction(3, None) == "3"
    assert fmt.fraction(None, None) == "-" and fmt.fraction(None, 4) == "0/4"
    assert [fmt.size(n) for n in (None, 512, 1536, 3 * 1024**3, 5 * 1024**5)] == [
        "-",
        "512B",
        "1.5KiB",
        "3.0GiB",
        "5120.0TiB",
    ]


def test_timestamps_are_utc() -> None:
    plus_two = datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert fmt.timestamp(plus_two) == "2026-05-01T12:00:00Z"
    assert fmt.timestamp(None) == "-"


def test_tables_align_columns_and_ignore_colour_codes() -> None:
    red = "\x1b[31mFailed\x1b[0m"
    lines = fmt.table(("NAME", "PHASE", "AGE"), [["a", red, "1s"], ["longer", "Running", "2h"]])
    assert lines == [
        "NAME     PHASE     AGE",
        f"a        {red}    1s",
        "longer   Running   2h",
    ]
    assert fmt.table(("A", "B"), [], indent="  ") == ["  A   B"]


def test_lines_are_cut_to_the_terminal_so_they_never_wrap() -> None:
    coloured = "\x1b[36mRunning\x1b[0m job"
    assert fmt.fit(coloured, 11) == coloured  # fits: colours kept
    assert fmt.fit(coloured, 5) == "Runni"
    assert fmt.fit("abc", 0) == ""


@pytest.mark.parametrize(
    ("percentage", "full", "text"),
    [
        (None, 0, EMPTY * 10),
        (0, 0, EMPTY * 10),
        (50, 5, FULL * 5 + EMPTY * 5),
        (55, 5, FULL * 5 + "▌" + EMPTY * 4),
        (100, 10, FULL * 10),
        (250, 10, FULL * 10),
        (-5, 0, EMPTY * 10),
    ],
)
def test_bars(percentage: float | None, full: int, text: str) -> None:
    rendered = bar(percentage, 10)
    assert rendered == text and len(rendered) == 10 and filled_cells(rendered) == full


def test_a_terminal_without_utf8_gets_ascii_bars() -> None:
    assert Style(bars=True, unicode=False).bar(55, 10) == "#####:----"


class _Stream(io.StringIO):
    def __init__(self, tty: bool, encoding: str = "utf-8") -> None:
        super().__init__()
        self._tty, self._encoding = tty, encoding

    def isatty(self) -> bool:
        return self._tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


def test_colour_and_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert Style.for_stream(_Stream(tty=True)) == Style(colour=True, bars=True, unicode=True)
    assert Style.for_stream(_Stream(tty=False)) == Style(colour=False, bars=False, unicode=True)
    assert not speaks_utf8(_Stream(tty=True, encoding="ascii"))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(_Stream(tty=True))
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_colour(_Stream(tty=True))


def test_phases_are_coloured_only_when_asked() -> None:
    assert Style().phase(Phase.FAILED) == "Failed"
    assert Style(colour=True).phase(Phase.FAILED) == "\x1b[31mFailed\x1b[0m"
    assert Style(colour=True).phase(None) == "-"
    assert Style(colour=True).paint("x", "no-such-colour") == "x"
