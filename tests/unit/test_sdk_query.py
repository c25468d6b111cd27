"""List filters as server-side selectors, phase parsing and client-side sorting."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain.api import Phase, TrainingJob
from kubetrain.sdk.query import (
    JobPage,
    created_at,
    field_selector,
    label_selector,
    parse_phase,
    phase_selector,
    phases,
    sort_jobs,
)


@pytest.mark.parametrize(
    ("text", "phase"),
    [
        ("running", Phase.RUNNING),
        ("Running", Phase.RUNNING),
        (" QUEUED ", Phase.QUEUED),
        ("cancelled", Phase.STOPPED),
        ("canceled", Phase.STOPPED),
        (Phase.FAILED, Phase.FAILED),
    ],
)
def test_phases_parse_in_any_case(text: str, phase: Phase) -> None:
    assert parse_phase(text) is phase


def test_an_unknown_phase_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown status 'sleeping'; expected one of Pending"):
        parse_phase("sleeping")


def test_one_phase_is_an_equality_term() -> None:
    assert phase_selector(phases("running")) == ["status.phase=Running"]


def test_several_phases_exclude_the_others_and_jobs_without_a_phase() -> None:
    terms = phase_selector(phases(["failed", "completed"]))
    assert terms == [
        "status.phase!=Pending",
        "status.phase!=Initializing",
        "status.phase!=Queued",
        "status.phase!=Running",
        "status.phase!=Stopping",
        "status.phase!=Stopped",
        "status.phase!=",
    ]


def test_pending_includes_jobs_the_operator_has_not_seen_yet() -> None:
    terms = phase_selector(phases("pending"))
    assert "status.phase!=" not in terms
    assert len(terms) == len(Phase) - 1 and "status.phase!=Pending" not in terms


def test_no_filter_or_every_phase_selects_everything() -> None:
    assert phase_selector(phases(None)) == []
    assert phase_selector(phases(list(Phase))) == []


def test_field_selector_joins_every_filter() -> None:
    assert field_selector() is None
    assert field_selector("Queued", "vision", "high", "yolo") == (
        "status.phase=Queued,spec.modelType=vision,spec.priority=high,metadata.name=yolo"
    )
    with pytest.raises(ValueError):
        field_selector(model_type="diffusion")


def test_label_selectors_from_mappings_or_strings() -> None:
    assert label_selector({"team": "nlp", "env": "prod"}) == "env=prod,team=nlp"
    assert label_selector("team in (nlp,cv)") == "team in (nlp,cv)"
    assert label_selector({}) is None and label_selector(None) is None


def _job(name: str, created: str, **status: Any) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"modelType": "llm", "dataset": {"synthetic": {}}, "llm": {"baseModel": "m"}},
            "status": status,
        }
    )


JOBS = [
    _job("b", "2026-01-01T00:00:02Z", phase="Running", progress={"percentage": 40.0}),
    _job("a", "2026-01-01T00:00:03Z", phase="Queued", metrics={"currentLoss": 0.5}),
    _job("c", "2026-01-01T00:00:01Z", phase="Completed", resourceUsage={"costUSD": 9.0}),
]


@pytest.mark.parametrize(
    ("key", "order", "names"),
    [
        ("name", "asc", ["a", "b", "c"]),
        ("name", "desc", ["c", "b", "a"]),
        ("created", "desc", ["a", "b", "c"]),
        ("created", "asc", ["c", "b", "a"]),
        ("progress", "desc", ["b", "a", "c"]),  # ties keep name order
        ("loss", "asc", ["a", "b", "c"]),  # unknown losses last
        ("cost", "desc", ["c", "a", "b"]),
        ("phase", "asc", ["c", "a", "b"]),
    ],
)
def test_sorting(key: str, order: Any, names: list[str]) -> None:
    assert [j.metadata.name for j in sort_jobs(JOBS, key, order)] == names


def test_bad_sort_arguments_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="choose one of name, created"):
        sort_jobs(JOBS, "size")
    with pytest.raises(ValueError, match="asc or desc"):
        sort_jobs(JOBS, "name", "down")  # type: ignore[arg-type]


def test_creation_time_is_read_from_the_metadata() -> None:
    created = created_at(JOBS[0])
    assert created is not None and created.isoformat() == "2026-01-01T00:00:02+00:00"
    assert created_at(TrainingJob.model_validate({"spec": JOBS[0].spec.model_dump()})) is None


def test_a_page_iterates_its_items() -> None:
    page = JobPage(items=JOBS, continue_token="abc")
    assert len(page) == 3 and [j.metadata.name for j in page] == ["b", "a", "c"]
    assert not JobPage()
