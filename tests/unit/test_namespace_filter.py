"""The operator's --namespace patterns, as its own watches apply them."""

from __future__ import annotations

import pytest

from kubetrain.operator.watching import NamespaceFilter


@pytest.mark.parametrize(
    ("patterns", "served", "left_out"),
    [
        ([], ["default", "team-a"], []),
        (["!nop-*,!e2e-*"], ["default", "test-x"], ["nop-1", "e2e-2"]),
        (["e2e-*"], ["e2e-1"], ["default", "nop-1"]),
        (["team-a", "team-b"], ["team-a", "team-b"], ["team-c"]),
        (["team-*,!team-secret"], ["team-a"], ["team-secret", "other"]),
    ],
)
def test_globs_serve_and_bangs_leave_out(
    patterns: list[str], served: list[str], left_out: list[str]
) -> None:
    serves = NamespaceFilter(patterns)
    assert [ns for ns in served if serves(ns)] == served
    assert [ns for ns in left_out if serves(ns)] == []
