"""The fetch stage: one fetch Pod puts every remote source (a hub model, a dataset at a URI)
into the cache before the first attempt, once; later attempts find it there."""

from __future__ import annotations

from datetime import timedelta

from kubetrain.api.children import fetch_pod_name
from kubetrain.api.fetch import fetch_sources
from kubetrain.api.report import EXIT_PERMANENT, FetchProgress, read_permanent
from kubetrain.api.status import FetchedSource, Initialization, Phase
from kubetrain.operator.reconcile.decision import Decision
from kubetrain.operator.status import PodView

FETCH_BACKOFF = 10.0
"""Seconds before the second fetch attempt after a transient failure; doubles, to 5 min."""


def fetched(d: Decision) -> bool:
    """Whether every remote source is in the cache (from an earlier pass or attempt)."""
    init = d.st.initialization
    if init is None or init.state != "Complete":
        return False
    have = {(s.name, s.uri) for s in init.sources}
    return all((s.name, s.uri) in have for s in fetch_sources(d.spec))


def fetch(d: Decision) -> bool:
    """Bring the fetch along; True once every source is in the cache (the first attempt
    then starts in the same pass)."""
    st, limit = d.st, d.spec.run_policy.backoff_limit
    init = st.initialization
    if init is None or init.state == "Complete":  # first fetch (or a source changed)
        init = st.initialization = Initialization(
            start_time=d.now, claim_name=d.lookups.cache_claim
        )
    init.attempts = max(init.attempts, 1)
    name = fetch_pod_name(d.job.metadata.name or "", init.attempts)
    d.plan.delete += [
        p.name for p in d.fetchers if p.name != name and not p.deleting and not p.finished
    ]
    pod = next((p for p in d.fetchers if p.name == name), None)
    what = ", ".join(f"{s.name} {s.uri}" for s in fetch_sources(d.spec))
    if pod is None:
        d.plan.fetch = init.attempts
        init.state = "Fetching"
        d.phase(Phase.INITIALIZING, "Fetching", f"fetching {what} into the cache")
        return False
    report = pod.decoded
    if pod.problem is not None:
        d.plan.bad_reports.append((pod, pod.problem))
    if pod.phase == "Succeeded" and report is not None and report.fetched:
        init.state, init.completion_time = "Complete", d.now
        init.sources = [FetchedSource.model_validate(s.model_dump()) for s in report.fetched]
        init.percentage, init.remaining_seconds, init.bytes_per_second = 100.0, 0.0, None
        sizes = ", ".join(
            f"{s.name} {_size(s.size_bytes)}{' (reused)' if s.reused else ''}"
            for s in report.fetched
        )
        d.event("Fetched", f"in the cache: {sizes}")
        return True
    if pod.phase == "Failed" and pod.exit_code == EXIT_PERMANENT:
        init.state = "Failed"
        d.fail(*read_permanent(pod.message))
        return False
    if pod.finished or (pod.deleting and not pod.finished):
        _again(d, init, pod, limit)
        return False
    if report is not None and report.fetch is not None:
        _mirror(init, report.fetch)
    d.phase(Phase.INITIALIZING, "Fetching", f"fetching {what} into the cache")
    return False


def _mirror(init: Initialization, fetch: FetchProgress) -> None:
    init.source = fetch.source or None
    init.bytes_done, init.bytes_total = fetch.bytes_done, fetch.bytes_total or None
    init.bytes_per_second = round(fetch.bytes_per_second, 1)
    if fetch.bytes_total:
        init.percentage = round(min(100.0, 100.0 * fetch.bytes_done / fetch.bytes_total), 1)
        if fetch.bytes_per_second > 0:
            left = (fetch.bytes_total - fetch.bytes_done) / fetch.bytes_per_second
            init.remaining_seconds = round(max(left, 0.0), 1)


def _again(d: Decision, init: Initialization, pod: PodView, limit: int) -> None:
    """A fetch Pod that failed for a transient reason (or was lost): another, later."""
    if init.attempts > limit:
        init.state = "Failed"
        detail = f"exit code {pod.exit_code}" if pod.exit_code is not None else "lost"
        if pod.message:
            detail += f": {pod.message}"
        d.fail(
            "FetchFailed",
            f"fetch Pod {pod.name} failed ({detail}); {init.attempts} attempts exceed "
            f"spec.runPolicy.backoffLimit ({limit})",
        )
        return
    wait = min(FETCH_BACKOFF * 2 ** (init.attempts - 1), 300.0)
    since = pod.finished_at or pod.deletion_time or d.now
    left = (since + timedelta(seconds=wait) - d.now).total_seconds()
    if left > 0:
        d.later(left)
        d.phase(
            Phase.INITIALIZING, "FetchRetrying",
            f"fetch Pod {pod.name} failed ({pod.message or pod.reason or 'no message'}); "
            f"trying again in {left:.0f}s",
        )  # fmt: skip
        return
    init.attempts += 1
    d.plan.fetch = init.attempts
    d.event("FetchRetrying", f"starting fetch attempt {init.attempts}", warning=True)


def _size(size: int) -> str:
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
