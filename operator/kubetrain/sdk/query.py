"""Filters, selectors and sort orders for listing TrainingJobs; pure, no I/O.

Filters become server-side selectors: the CRD declares ``spec.modelType``,
``spec.priority`` and ``status.phase`` as selectable fields, so the API server filters
and pages through only the matching jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kubetrain.api import ModelType, Phase, Priority, TrainingJob

PhaseFilter = Phase | str | Iterable[Phase | str]
Order = Literal["asc", "desc"]

_PHASE_ALIASES = {"cancelled": Phase.STOPPED, "canceled": Phase.STOPPED}


def parse_phase(value: Phase | str) -> Phase:
    """A phase from its name in any case; ``cancelled`` (the managed APIs' word) is Stopped."""
    if isinstance(value, Phase):
        return value
    text = value.strip().lower()
    if text in _PHASE_ALIASES:
        return _PHASE_ALIASES[text]
    for phase in Phase:
        if phase.value.lower() == text:
            return phase
    known = ", ".join(p.value for p in Phase)
    raise ValueError(f"unknown status {value!r}; expected one of {known}")


def phases(status: PhaseFilter | None) -> frozenset[Phase]:
    """The set of phases a ``status=`` filter asks for (empty: no filter)."""
    if status is None:
        return frozenset()
    if isinstance(status, Phase | str):
        return frozenset({parse_phase(status)})
    return frozenset(parse_phase(s) for s in status)


def phase_selector(wanted: frozenset[Phase]) -> list[str]:
    """Field-selector terms matching exactly the jobs in ``wanted`` phases.

    Field selectors only AND terms together, so a set of phases is written as "none of the
    others". A job the operator has not seen yet has no phase; it counts as Pending.
    """
    if not wanted or wanted == frozenset(Phase):
        return []
    if len(wanted) == 1 and Phase.PENDING not in wanted:
        return [f"status.phase={next(iter(wanted)).value}"]
    terms = [f"status.phase!={p.value}" for p in Phase if p not in wanted]
    if Phase.PENDING not in wanted:
        terms.append("status.phase!=")
    return terms


def field_selector(
    status: PhaseFilter | None = None,
    model_type: ModelType | str | None = None,
    priority: Priority | str | None = None,
    name: str | None = None,
) -> str | None:
    """The ``fieldSelector`` for the filters, or None when there is none."""
    terms = phase_selector(phases(status))
    if model_type is not None:
        terms.append(f"spec.modelType={ModelType(model_type).value}")
    if priority is not None:
        terms.append(f"spec.priority={Priority(priority).value}")
    if name is not None:
        terms.append(f"metadata.name={name}")
    return ",".join(terms) or None


def label_selector(labels: Mapping[str, str] | str | None) -> str | None:
    """A ``labelSelector`` from a mapping (all must match) or a selector string as given."""
    if labels is None or isinstance(labels, str):
        return labels or None
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None


def created_at(job: TrainingJob) -> datetime | None:
    """metadata.creationTimestamp."""
    return job.metadata.creation_timestamp


def _progress(job: TrainingJob) -> float:
    progress = job.status.progress
    return progress.percentage or 0.0 if progress else 0.0


def _loss(job: TrainingJob) -> float:
    metrics = job.status.metrics
    loss = metrics.current_loss if metrics else None
    return float("inf") if loss is None else loss


def _cost(job: TrainingJob) -> float:
    usage = job.status.resource_usage
    return usage.cost_usd or 0.0 if usage else 0.0


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SORT_KEYS: dict[str, Callable[[TrainingJob], Any]] = {
    "name": lambda j: (j.metadata.namespace or "", j.metadata.name or ""),
    "created": lambda j: created_at(j) or _EPOCH,
    "phase": lambda j: j.status.phase.value if j.status.phase else "",
    "progress": _progress,
    "loss": _loss,
    "cost": _cost,
}
"""What ``list(sort=...)`` can order by."""


def sort_jobs(jobs: Iterable[TrainingJob], sort: str, order: Order = "asc") -> list[TrainingJob]:
    """``jobs`` ordered by ``sort`` (a key of SORT_KEYS); ties keep namespace/name order."""
    if sort not in SORT_KEYS:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(SORT_KEYS)}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be asc or desc, not {order!r}")
    by_name = sorted(jobs, key=SORT_KEYS["name"])
    return sorted(by_name, key=SORT_KEYS[sort], reverse=order == "desc")


@dataclass(frozen=True)
class JobPage:
    """One page of a listing; pass ``continue_token`` back to ``list`` for the next one."""

    items: list[TrainingJob] = field(default_factory=list)
    continue_token: str | None = None
    remaining: int | None = None
    """The API server's estimate of how many more jobs match (when it gives one)."""

    def __iter__(self) -> Iterator[TrainingJob]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
