"""Curves in the terminal: charts of a metric by step, and the watch's sparkline."""

from __future__ import annotations

from kubetrain.cli.plot import chart, sparkline


def test_a_falling_loss_is_drawn_from_the_top_left_to_the_bottom_right() -> None:
    points = [(float(step), 2.0 - step / 100) for step in range(1, 101)]
    lines = chart(points, width=20, height=5, title="loss by step")
    assert lines[0] == "loss by step"
    rows = lines[1:6]
    assert rows[0].startswith("1.99 |•") and rows[-1].startswith("   1 |")
    assert rows[-1].rstrip().endswith("•")  # the last step, at the lowest loss
    assert lines[-1].split() == ["1", "100"]  # the step range under the axis


def test_no_points_say_so_and_ascii_terminals_get_ascii() -> None:
    assert chart([], title="loss") == ["loss: no data yet"]
    assert "*" in "".join(chart([(1, 1.0), (2, 0.5)], width=4, height=2, unicode=False))


def test_the_sparkline_spans_the_lowest_to_the_highest_value() -> None:
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"  # 2.0 is half way: round(3.5) is 4
    assert sparkline([1.0, 1.0]) == "▁▁" and sparkline([]) == ""
    assert sparkline([0.0, 1.0], unicode=False) == "_@"
