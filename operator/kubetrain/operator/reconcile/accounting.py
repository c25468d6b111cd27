"""Accounting: GPU hours, cost and training time from the Pods' own run times, and the
estimates (time left, completion, total cost) that follow from them."""

from __future__ import annotations

from datetime import datetime, timedelta

from kubetrain.api.status import (
    EstimatedCost,
    Phase,
    Progress,
    ResourceAllocation,
    ResourceUsage,
    allocation_summary,
)
from kubetrain.operator.placement import Placement
from kubetrain.operator.reconcile.decision import Decision
from kubetrain.operator.status import PodView, estimate_remaining


def account(d: Decision, placement: Placement) -> None:
    """Accrue GPU hours, cost and training time from the Pods' own run times.

    Each worker's run (its container's start to its finish, or now while it runs) is
    clipped to the time since ``resourceUsage.lastUpdateTime``, so nothing is counted
    twice or lost between passes, whether or not the previous pass was written; totals
    are kept unrounded (display rounds). ``lastUpdateTime`` stands still while no
    worker runs, so the next run is counted from its own start.
    """
    st, spec = d.st, d.spec
    workers, gpus = spec.resources.workers, placement.gpus_per_worker
    units = gpus * workers if placement.entry.is_gpu else workers
    price = placement.entry.price_per_hour
    st.resource_allocation = ResourceAllocation(
        gpu_type=placement.gpu_type,
        gpu_product=placement.entry.products[0] if placement.entry.products else None,
        workers=workers,
        gpus_per_worker=gpus,
        cpu_per_worker=placement.cpu,
        memory_per_worker=placement.memory,
        priority_class_name=d.settings.priority_classes.get(str(spec.priority)),
        summary=allocation_summary(placement.gpu_type, max(gpus, 1), workers),
    )
    usage = st.resource_usage or ResourceUsage(gpu_hours=0.0, cost_usd=0.0)
    since = usage.last_update_time
    spans = [s for p in d.pods if (s := _run_span(p, since, d.now)) is not None]
    if spans:
        worker_hours = sum((end - start).total_seconds() for start, end in spans) / 3600
        per_worker = gpus if placement.entry.is_gpu else 1
        usage.gpu_hours = (usage.gpu_hours or 0.0) + gpus * worker_hours
        usage.cost_usd = (usage.cost_usd or 0.0) + price * per_worker * worker_hours
        progress = st.progress or Progress()
        progress.elapsed_seconds = (progress.elapsed_seconds or 0.0) + _covered(spans)
        st.progress = progress
    if spans or any(p.phase == "Running" for p in d.pods):
        usage.last_update_time = d.now
    usage.gpu_hours, usage.cost_usd = usage.gpu_hours or 0.0, usage.cost_usd or 0.0
    st.resource_usage = usage
    hourly = round(price * units, 4)
    st.estimated_cost = (st.estimated_cost or EstimatedCost()).model_copy(
        update={"hourly_usd": hourly}
    )


def estimate(d: Decision) -> None:
    """Time left, the completion time while running, and the whole run's cost."""
    st = d.st
    if st.progress is None:
        return
    remaining = estimate_remaining(st.progress)
    st.progress.remaining_seconds = remaining
    if remaining is None:
        return
    if st.phase is Phase.RUNNING:
        st.estimated_completion_time = (d.now + timedelta(seconds=remaining)).replace(microsecond=0)
    hourly = st.estimated_cost.hourly_usd if st.estimated_cost else None
    if hourly is not None:
        total = hourly * ((st.progress.elapsed_seconds or 0.0) + remaining) / 3600
        st.estimated_cost = EstimatedCost(hourly_usd=hourly, total_usd=round(total, 4))


def _run_span(
    pod: PodView, since: datetime | None, now: datetime
) -> tuple[datetime, datetime] | None:
    """The part of the Pod's run after ``since``: (start, end), or None if there is none."""
    if pod.phase == "Running":
        end = now
    elif pod.finished and pod.finished_at is not None:
        end = min(pod.finished_at, now)
    else:
        return None
    start = pod.started_at or since or now
    if since is not None:
        start = max(start, since)
    return (start, end) if end > start else None


def _covered(spans: list[tuple[datetime, datetime]]) -> float:
    """Seconds during which at least one of the spans ran."""
    total, reach = 0.0, None
    for begin, end in sorted(spans):
        start = begin if reach is None else max(begin, reach)
        if end > start:
            total += (end - start).total_seconds()
            reach = end
    return total
