"""The reconciler's decisions, as a pure function of the job, its Pods and the time.

``plan`` looks at what is (the TrainingJob with its last written status, the worker Pods)
and says what should be: the new status, which Pods to create or delete, which Events to
post. It is level-based: running it twice on the same inputs gives the same answer, and
a crash between any two actions is repaired by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetrain.api.children import checkpoint_claim_name, fetch_pod_name
from kubetrain.api.fetch import fetch_sources
from kubetrain.api.job import TrainingJob
from kubetrain.api.report import (
    EXIT_PERMANENT,
    FetchProgress,
    ProgressReport,
    ReportError,
    read_permanent,
)
from kubetrain.api.status import (
    SPEC_ERRORS,
    ConditionStatus,
    EstimatedCost,
    FetchedSource,
    Initialization,
    Phase,
    Progress,
    QueueStatus,
    ResourceAllocation,
    ResourceUsage,
    TrainingJobStatus,
    allocation_summary,
)
from kubetrain.api.termination import Termination, parse_termination
from kubetrain.operator.kueue import WorkloadView, digest_of, workload_name
from kubetrain.operator.reconcile.refusals import Refusal
from kubetrain.operator.render import Placement
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import (
    WAITING_FOR_GOOD,
    PodView,
    estimate_remaining,
    mirror_report,
    model_output,
    read_report,
    set_condition,
)

_PHASE_CONDITION = {
    Phase.INITIALIZING: "Initializing",
    Phase.QUEUED: "Queued",
    Phase.RUNNING: "Running",
    Phase.STOPPING: "Suspended",
    Phase.STOPPED: "Suspended",
    Phase.COMPLETED: "Completed",
    Phase.FAILED: "Failed",
}
_PHASE_CONDITIONS = frozenset(_PHASE_CONDITION.values())
"""The conditions that follow the phase (one True at a time); the others (Published,
PodCreationFailed, ContainersWaiting) say something of their own."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the job."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class WorkloadAction:
    """What to do with the job's Kueue Workload: create, delete, release (clear an evicted
    Workload's admission, returning its quota) or finish (mark it Finished)."""

    kind: str
    reason: str = ""
    message: str = ""


@dataclass
class Plan:
    """What the reconciler should do now."""

    status: TrainingJobStatus
    create: list[int] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    bad_reports: list[tuple[PodView, str]] = field(default_factory=list)
    resume_from: str = "latest"
    placement: Placement | None = None
    delete_job: bool = False
    requeue_after: float | None = None
    fetch: int | None = None
    """The fetch attempt whose Pod to create, if any."""
    workload: WorkloadAction | None = None


@dataclass(frozen=True)
class Lookups:
    """What the reconciler looked up in the cluster for this pass (the plan stays pure)."""

    cache_claim: str | None = None
    """The shared cache claim a new fetch uses (spec.cache, or the operator's where it exists)."""
    dataset_claim_missing: bool = False
    """spec.dataset.pvc names a claim that does not exist."""
    queue: str | None = None
    """The LocalQueue that admits the job (Kueue), or None: the job is not queued."""
    kueue_off: bool = False
    """The job names a LocalQueue, but the operator's Kueue integration is off."""
    workload: WorkloadView | None = None
    """The job's Workload as last seen, if it has one."""
    desired_workload: dict[str, Any] | None = None
    """The Workload the job needs now (its workers, queue and priority); one whose digest
    differs is stale."""
    cluster_queue: str | None = None
    """The ClusterQueue behind ``queue``, where known."""
    position: int | None = None
    """The job's place in its LocalQueue while it waits, from Kueue's visibility API."""
    refusal: Refusal | None = None
    """The API server refused an action of the job for good (or too often): it fails."""


CONTAINERS_WAITING = "ContainersWaiting"
"""The condition of containers that wait for a person to act (see ``_stuck``)."""

DATASET_CLAIM_GRACE = timedelta(seconds=10)
"""How long a job waits for its dataset claim (applied with it, a moment later) to appear."""
FETCH_BACKOFF = 10.0
"""Seconds before the second fetch attempt after a transient failure; doubles, to 5 min."""


class _Planner:
    def __init__(
        self,
        job: TrainingJob,
        pods: list[PodView],
        now: datetime,
        settings: Settings,
        lookups: Lookups,
    ):
        self.job, self.spec, self.now, self.settings = job, job.spec, now, settings
        self.pods = [p for p in pods if p.stage != "fetch"]  # the workers
        self.fetchers = [p for p in pods if p.stage == "fetch"]
        self.lookups = lookups
        self.queue, self.wl = lookups.queue, lookups.workload
        self.generation = job.metadata.generation
        self.plan = Plan(status=job.status.model_copy(deep=True))
        self.st = self.plan.status
        self.st.observed_generation = self.generation

    # -- helpers -------------------------------------------------------------------------

    def phase(self, phase: Phase, reason: str, message: str, *, warning: bool = False) -> None:
        """Move to ``phase``, keeping the conditions and an Event in step with it."""
        st, previous = self.st, self.st.phase
        kind = _PHASE_CONDITION.get(phase)
        for condition in list(st.conditions):
            if (
                condition.type != kind
                and condition.type in _PHASE_CONDITIONS
                and condition.status is ConditionStatus.TRUE
            ):
                st.conditions = self._condition(
                    condition.type, ConditionStatus.FALSE, reason, message
                )
        if kind is not None:
            st.conditions = self._condition(kind, ConditionStatus.TRUE, reason, message)
        if previous != phase:
            st.phase = phase
            # Pending -> Running is routine: the Running condition records it, an Event (a
            # write for the whole cluster) would not add to it. After a wait it is news.
            if not (phase is Phase.RUNNING and previous is Phase.PENDING):
                self.event(reason, message, warning=warning or phase is Phase.FAILED)

    def _condition(self, type_: str, status: ConditionStatus, reason: str, message: str) -> list:  # type: ignore[type-arg]
        return set_condition(
            self.st.conditions,
            type_,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.now,
        )

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.plan.events.append(Event("Warning" if warning else "Normal", reason, message))

    def delete_active(self) -> None:
        """Stop every Pod that still runs (gracefully: a trainer checkpoints)."""
        self.plan.delete += [
            p.name for p in self.pods + self.fetchers if not p.deleting and not p.finished
        ]

    def fail(self, reason: str, message: str) -> Plan:
        self.phase(Phase.FAILED, reason, message, warning=True)
        if reason not in SPEC_ERRORS:
            self.st.completion_time = self.st.completion_time or self.now
        self.st.estimated_completion_time = None
        self.delete_active()
        self._finish_workload(succeeded=False, message=message)
        return self.plan

    def _finish_workload(self, *, succeeded: bool, message: str) -> None:
        """A finished job's Workload is marked Finished: Kueue frees its quota at once."""
        wl = self.wl
        if wl is not None and not wl.finished and not wl.deleting:
            reason = "Succeeded" if succeeded else "Failed"
            self.plan.workload = WorkloadAction("finish", reason, message)
        if self.st.queue is not None:
            self.st.queue.admitted, self.st.queue.position = False, None

    # -- the decision --------------------------------------------------------------------

    def run(self) -> Plan:
        st, spec = self.st, self.spec
        if st.phase is Phase.COMPLETED or (st.phase is Phase.FAILED and not self._retryable()):
            return self._finished()
        refusal = self.lookups.refusal
        if refusal is not None and refusal.generation in (None, self.generation):
            return self.fail(refusal.reason, refusal.message)

        catalogue = self.settings.catalogue
        gpu_type = catalogue.gpu_type_for(spec)
        entry = catalogue.get(gpu_type)
        if entry is None:
            return self.fail(
                "UnknownGPUType",
                f"spec.resources.gpuType: {gpu_type!r} is not in the operator's GPU catalogue; "
                f"available types: {', '.join(catalogue.names)}",
            )
        placement = self.plan.placement = Placement.resolve(spec, gpu_type, entry)
        self._account(placement)
        self._mirror_reports()

        current = [p for p in self.pods if p.attempt == st.attempt]
        stale = [p for p in self.pods if p.attempt != st.attempt]
        self.plan.delete += [p.name for p in stale if not p.deleting]

        workers = spec.resources.workers
        ended = {p.name: _completed(p) for p in current}
        if st.attempt and len(current) == workers and all(ended.values()):
            return self._complete([t for t in ended.values() if isinstance(t, Termination)])

        if hold := self._hold():
            return self._stop(*hold)
        if self.wl is not None and self.wl.evicted_reason and self.wl.quota_reserved:
            return self._evicted(self.wl)

        # Training time (progress.elapsedSeconds) excludes every stop: a job stopped past
        # the deadline's wall-clock time is not failed for it, on resume or ever.
        deadline = spec.run_policy.active_deadline_seconds
        trained = (st.progress.elapsed_seconds or 0.0) if st.progress else 0.0
        if deadline and trained >= deadline:
            return self.fail(
                "DeadlineExceeded",
                f"the job trained {trained:.0f}s, longer than "
                f"spec.runPolicy.activeDeadlineSeconds ({deadline}s)",
            )

        failed = [p for p in current if p.phase == "Failed" and not ended[p.name]]
        lost = [p for p in current if p.deleting and not p.finished]
        if failed or lost:
            return self._restart(failed, lost)
        if self._stuck(current):
            return self.plan
        resized = [p for p in current if p.workers not in (None, workers) and not p.finished]
        if resized:
            return self._resize(resized[0].workers or 0)

        # A first start, a resume, or a run after a spec error cured by a new generation.
        if st.attempt == 0 or st.phase in (Phase.STOPPED, Phase.FAILED, Phase.INITIALIZING):
            if self.lookups.dataset_claim_missing:
                return self._no_dataset_claim()
            if fetch_sources(spec) and not self._fetched():
                return self._fetch()
            if not self._start():
                return self.plan
            current = []

        self.plan.resume_from = st.resumed_from or "latest"
        if any(p.attempt != st.attempt and not self._abandoned(p) for p in self.pods):
            return self.plan  # the previous attempt's Pods are still stopping: wait for them
        present = {p.index for p in current}
        missing = [i for i in range(workers) if i not in present]
        if not self._admit(current, creating=bool(missing)):
            self._estimate()
            return self.plan
        self.plan.create = missing
        self._phase_from(current)
        self._estimate()
        return self.plan

    def _no_dataset_claim(self) -> Plan:
        claim = self.spec.dataset.pvc.claim_name if self.spec.dataset.pvc else ""
        created = self.job.metadata.creation_timestamp
        if created is not None and self.now - created < DATASET_CLAIM_GRACE:
            self.plan.requeue_after = 2.0
            return self.plan
        return self.fail(
            "DatasetNotFound",
            f"spec.dataset.pvc.claimName: there is no PersistentVolumeClaim {claim!r} in "
            f"namespace {self.job.metadata.namespace}",
        )

    def _fetched(self) -> bool:
        """Whether every remote source is in the cache (from an earlier pass or attempt)."""
        init = self.st.initialization
        if init is None or init.state != "Complete":
            return False
        have = {(s.name, s.uri) for s in init.sources}
        return all((s.name, s.uri) in have for s in fetch_sources(self.spec))

    def _fetch(self) -> Plan:
        """The fetch stage: one fetch Pod puts every remote source into the cache, once."""
        st, limit = self.st, self.spec.run_policy.backoff_limit
        init = st.initialization
        if init is None or init.state == "Complete":  # first fetch (or a source changed)
            init = st.initialization = Initialization(
                start_time=self.now, claim_name=self.lookups.cache_claim
            )
        init.attempts = max(init.attempts, 1)
        name = fetch_pod_name(self.job.metadata.name or "", init.attempts)
        self.plan.delete += [
            p.name for p in self.fetchers if p.name != name and not p.deleting and not p.finished
        ]
        pod = next((p for p in self.fetchers if p.name == name), None)
        what = ", ".join(f"{s.name} {s.uri}" for s in fetch_sources(self.spec))
        if pod is None:
            self.plan.fetch = init.attempts
            init.state = "Fetching"
            self.phase(Phase.INITIALIZING, "Fetching", f"fetching {what} into the cache")
            return self.plan
        report = self._fetch_report(pod)
        if pod.phase == "Succeeded" and report is not None and report.fetched:
            init.state, init.completion_time = "Complete", self.now
            init.sources = [FetchedSource.model_validate(s.model_dump()) for s in report.fetched]
            init.percentage, init.remaining_seconds, init.bytes_per_second = 100.0, 0.0, None
            sizes = ", ".join(
                f"{s.name} {_size(s.size_bytes)}{' (reused)' if s.reused else ''}"
                for s in report.fetched
            )
            self.event("Fetched", f"in the cache: {sizes}")
            return self._start_after_fetch()
        if pod.phase == "Failed" and pod.exit_code == EXIT_PERMANENT:
            init.state = "Failed"
            reason, message = read_permanent(pod.message)
            return self.fail(reason, message)
        if pod.finished or (pod.deleting and not pod.finished):
            return self._fetch_again(init, pod, limit)
        if report is not None and report.fetch is not None:
            self._mirror_fetch(init, report.fetch)
        self.phase(Phase.INITIALIZING, "Fetching", f"fetching {what} into the cache")
        return self.plan

    def _fetch_report(self, pod: PodView) -> ProgressReport | None:
        try:
            return read_report(pod)
        except ReportError as err:
            self.plan.bad_reports.append((pod, str(err)))
            return None

    def _mirror_fetch(self, init: Initialization, fetch: FetchProgress) -> None:
        init.source = fetch.source or None
        init.bytes_done, init.bytes_total = fetch.bytes_done, fetch.bytes_total or None
        init.bytes_per_second = round(fetch.bytes_per_second, 1)
        if fetch.bytes_total:
            init.percentage = round(min(100.0, 100.0 * fetch.bytes_done / fetch.bytes_total), 1)
            if fetch.bytes_per_second > 0:
                left = (fetch.bytes_total - fetch.bytes_done) / fetch.bytes_per_second
                init.remaining_seconds = round(max(left, 0.0), 1)

    def _fetch_again(self, init: Initialization, pod: PodView, limit: int) -> Plan:
        """A fetch Pod that failed for a transient reason (or was lost): another, later."""
        if init.attempts > limit:
            init.state = "Failed"
            detail = f"exit code {pod.exit_code}" if pod.exit_code is not None else "lost"
            if pod.message:
                detail += f": {pod.message}"
            return self.fail(
                "FetchFailed",
                f"fetch Pod {pod.name} failed ({detail}); {init.attempts} attempts exceed "
                f"spec.runPolicy.backoffLimit ({limit})",
            )
        wait = min(FETCH_BACKOFF * 2 ** (init.attempts - 1), 300.0)
        since = pod.finished_at or pod.deletion_time or self.now
        left = (since + timedelta(seconds=wait) - self.now).total_seconds()
        if left > 0:
            self.plan.requeue_after = left
            self.phase(
                Phase.INITIALIZING, "FetchRetrying",
                f"fetch Pod {pod.name} failed ({pod.message or pod.reason or 'no message'}); "
                f"trying again in {left:.0f}s",
            )  # fmt: skip
            return self.plan
        init.attempts += 1
        self.plan.fetch = init.attempts
        self.event("FetchRetrying", f"starting fetch attempt {init.attempts}", warning=True)
        return self.plan

    def _start_after_fetch(self) -> Plan:
        """Once fetched, the first attempt starts in the same pass."""
        if not self._start():
            return self.plan
        self.plan.resume_from = self.st.resumed_from or "latest"
        if self._admit([], creating=True):
            self.plan.create = list(range(self.spec.resources.workers))
        self._estimate()
        return self.plan

    def _abandoned(self, pod: PodView) -> bool:
        """A Pod of an earlier attempt that will never confirm its end: its node is lost
        (evicted by the node lifecycle controller), or it is past its deletion deadline by
        more than lostNodeGraceSeconds. A new attempt does not wait for it."""
        grace = timedelta(seconds=self.settings.lost_node_grace_seconds)
        overdue = pod.deletion_time is not None and self.now - pod.deletion_time > grace
        return pod.deleting and (pod.node_lost or overdue)

    def _retryable(self) -> bool:
        failed = self.st.condition("Failed")
        return (
            failed is not None
            and failed.reason in SPEC_ERRORS
            and failed.observed_generation != self.generation
        )

    def _finished(self) -> Plan:
        self.delete_active()
        condition = self.st.condition(str(self.st.phase)) if self.st.phase else None
        self._finish_workload(
            succeeded=self.st.phase is Phase.COMPLETED,
            message=condition.message if condition else "",
        )
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        done = self.st.completion_time
        if ttl is not None and done is not None:
            left = (done + timedelta(seconds=ttl) - self.now).total_seconds()
            if left <= 0:
                self.plan.delete_job = True
            else:
                self.plan.requeue_after = left
        return self.plan

    def _account(self, placement: Placement) -> None:
        """Accrue GPU hours, cost and training time from the Pods' own run times.

        Each worker's run (its container's start to its finish, or now while it runs) is
        clipped to the time since ``resourceUsage.lastUpdateTime``, so nothing is counted
        twice or lost between passes, whether or not the previous pass was written; totals
        are kept unrounded (display rounds). ``lastUpdateTime`` stands still while no
        worker runs, so the next run is counted from its own start.
        """
        st, spec = self.st, self.spec
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
            priority_class_name=self.settings.priority_classes.get(str(spec.priority)),
            summary=allocation_summary(placement.gpu_type, max(gpus, 1), workers),
        )
        usage = st.resource_usage or ResourceUsage(gpu_hours=0.0, cost_usd=0.0)
        since = usage.last_update_time
        spans = [s for p in self.pods if (s := _run_span(p, since, self.now)) is not None]
        if spans:
            worker_hours = sum((end - start).total_seconds() for start, end in spans) / 3600
            per_worker = gpus if placement.entry.is_gpu else 1
            usage.gpu_hours = (usage.gpu_hours or 0.0) + gpus * worker_hours
            usage.cost_usd = (usage.cost_usd or 0.0) + price * per_worker * worker_hours
            progress = st.progress or Progress()
            progress.elapsed_seconds = (progress.elapsed_seconds or 0.0) + _covered(spans)
            st.progress = progress
        if spans or any(p.phase == "Running" for p in self.pods):
            usage.last_update_time = self.now
        usage.gpu_hours, usage.cost_usd = usage.gpu_hours or 0.0, usage.cost_usd or 0.0
        st.resource_usage = usage
        hourly = round(price * units, 4)
        st.estimated_cost = (st.estimated_cost or EstimatedCost()).model_copy(
            update={"hourly_usd": hourly}
        )

    def _mirror_reports(self) -> None:
        """Mirror the newest valid report of worker 0 (rank 0 is the only reporter)."""
        reporters = sorted(
            (p for p in self.pods if p.index == 0 and p.report), key=lambda p: p.attempt
        )
        for pod in reporters:
            try:
                report = read_report(pod)
            except ReportError as err:
                self.plan.bad_reports.append((pod, str(err)))
                continue
            if report is not None and not self._behind(pod, report):
                claim = checkpoint_claim_name(self.job)
                self.plan.status = self.st = mirror_report(self.st, report, claim)
                if self.st.progress is not None:
                    self.st.progress.attempt = pod.attempt
                if report.model is not None and self.spec.output is not None:
                    self._published(report.model.uri, report.model.upload_error)

    def _behind(self, pod: PodView, report: ProgressReport) -> bool:
        """Whether ``report`` is older than what status shows: from an earlier attempt than
        the one status mirrors, or from the same attempt at an earlier step (e.g. the Pod's
        annotation read back after an operator restart, behind the pushed reports)."""
        shown = self.st.progress
        if shown is None or shown.attempt is None:
            return False
        if pod.attempt != shown.attempt:
            return pod.attempt < shown.attempt
        return report.step < (shown.current_step or 0)

    def _published(self, uri: str, error: str) -> None:
        """The Published condition (and an Event when it changes) from rank 0's last word."""
        if not uri and not error:
            return
        old = self.st.condition("Published")
        status = ConditionStatus.TRUE if uri else ConditionStatus.FALSE
        reason = "Uploaded" if uri else "UploadFailed"
        target = self.spec.output.uri if self.spec.output else ""
        message = (
            f"the model is at {uri}"
            if uri
            else f"uploading to {target} failed: {error}; the model stays on the volume"
        )
        if old is not None and old.status == status and old.message == message:
            return
        self.st.conditions = self._condition("Published", status, reason, message)
        self.event(reason, message, warning=not uri)

    def _hold(self) -> tuple[str, str] | None:
        """Why the job must not run now (suspended, over budget), or None."""
        if self.spec.suspend:
            return "Suspended", "spec.suspend is true"
        ceiling = self.spec.run_policy.max_cost_usd
        spent = (self.st.resource_usage.cost_usd or 0.0) if self.st.resource_usage else 0.0
        if ceiling is not None and spent >= ceiling:
            return (
                "CostLimitReached",
                f"resourceUsage.costUSD {spent:.2f} reached spec.runPolicy.maxCostUSD "
                f"{ceiling:.2f}; raise the limit to resume",
            )
        return None

    def _stop(self, reason: str, message: str) -> Plan:
        self.delete_active()
        self.st.estimated_completion_time = None
        if any(not p.finished for p in self.pods + self.fetchers):
            self.phase(Phase.STOPPING, "Stopping", f"{message}: workers are writing a checkpoint")
        else:
            latest = self.st.latest_checkpoint
            where = f"; latest checkpoint {latest}" if latest else ""
            self.phase(Phase.STOPPED, reason, f"{message}{where}")
            if self.wl is not None and not self.wl.deleting:
                self.plan.workload = WorkloadAction("delete", reason, message)
            if self.st.queue is not None:  # its Workload goes, and its quota with it
                queue = self.st.queue
                queue.admitted, queue.flavors, queue.position = False, None, None
                queue.message = f"quota released: {message}"
        return self.plan

    def _complete(self, said: list[Termination]) -> Plan:
        """Every worker finished its run: by exit code 0, or by its termination message when
        its exit code was lost to the end of the process (a final report it could not
        deliver, a thread the interpreter aborted on)."""
        st = self.st
        told = next((t.model for t in said if t.model is not None), None)
        if told is not None and (st.model is None or not st.model.path):
            st.model = model_output(told, checkpoint_claim_name(self.job))
        if said:
            self.event(
                "CompletedWithoutReport",
                f"the trainer said it completed (step {said[0].step}) in its termination "
                "message; its final progress report never arrived",
            )
        st.completion_time = self.now
        st.estimated_completion_time = None
        if st.progress is not None:
            st.progress.remaining_seconds = 0.0
            if st.progress.total_steps:
                st.progress.current_step = st.progress.total_steps
                st.progress.percentage = 100.0
        where = f"; model at {st.model.path}" if st.model and st.model.path else ""
        self.phase(Phase.COMPLETED, "TrainingSucceeded", f"all workers finished{where}")
        self._finish_workload(succeeded=True, message=f"all workers finished{where}")
        return self.plan

    def _stuck(self, current: list[PodView]) -> bool:
        """Containers that wait for a person (an image that cannot be pulled, a missing
        Secret): ``ContainersWaiting`` carries the kubelet's word at once, and the job fails
        once they waited ``containerWaitingGraceSeconds`` (at once where no wait can help).
        True when the job failed."""
        active = [p for p in current + self.fetchers if not p.deleting and not p.finished]
        stuck = next((p for p in active if p.waiting), None)
        old = self.st.condition(CONTAINERS_WAITING)
        if stuck is None or stuck.waiting is None:
            if old is not None and old.status is ConditionStatus.TRUE:
                self.st.conditions = self._condition(
                    CONTAINERS_WAITING, ConditionStatus.FALSE, "ContainersStarted",
                    "every container started",
                )  # fmt: skip
            return False
        reason, detail = stuck.waiting
        who = f"the fetch Pod {stuck.name}" if stuck.stage == "fetch" else (
            f"worker {stuck.index} ({stuck.name})"
        )  # fmt: skip
        message = f"{who}: {reason}: {detail}"
        if old is None or old.status is not ConditionStatus.TRUE:
            self.event(reason, message, warning=True)
        self.st.conditions = self._condition(
            CONTAINERS_WAITING, ConditionStatus.TRUE, reason, message
        )
        since = self.st.condition(CONTAINERS_WAITING).last_transition_time  # type: ignore[union-attr]
        grace = self.settings.container_waiting_grace_seconds
        waited = (self.now - since).total_seconds() if since else 0.0
        if reason in WAITING_FOR_GOOD:
            self.fail(reason, message)
            return True
        if waited >= grace:
            self.fail(
                reason,
                f"{message} (waited {waited:.0f}s; the operator's containerWaitingGraceSeconds "
                f"is {grace})",
            )
            return True
        left = grace - waited
        self.plan.requeue_after = min(self.plan.requeue_after or left, left)
        return False

    def _restart(self, failed: list[PodView], lost: list[PodView]) -> Plan:
        st, limit = self.st, self.spec.run_policy.backoff_limit
        broken = [p for p in failed if not p.disrupted]
        permanent = next((p for p in broken if p.exit_code == EXIT_PERMANENT), None)
        if permanent is not None:  # bad configuration or data: no retry can cure it
            reason, message = read_permanent(permanent.message)
            return self.fail(reason, f"worker {permanent.index} ({permanent.name}): {message}")
        if broken:
            pod = broken[0]
            if pod.evicted_for_own_use:
                detail = f"worker {pod.index} ({pod.name}) was evicted: {pod.message}"
            else:
                detail = f"worker {pod.index} ({pod.name}) exited with code {pod.exit_code}"
                if pod.message:
                    detail += f": {pod.message}"
            st.failures += 1
            if st.failures > limit:
                return self.fail(
                    "BackoffLimitExceeded",
                    f"{detail}; {st.failures} failures exceed "
                    f"spec.runPolicy.backoffLimit ({limit})",
                )
            self.event(
                "TrainerFailed",
                f"{detail}; restarting from the latest checkpoint "
                f"(failure {st.failures} of {limit} allowed)",
                warning=True,
            )
        else:
            pod = (failed + lost)[0]
            why = pod.disruption or pod.reason or ("deleted" if pod.deleting else "stopped")
            st.restarts += 1
            most = self.spec.run_policy.max_restarts
            if st.restarts > most:
                return self.fail(
                    "RestartLimitExceeded",
                    f"worker {pod.index} ({pod.name}) was lost ({why}); {st.restarts} restarts "
                    f"exceed spec.runPolicy.maxRestarts ({most})",
                )
            self.event(
                "WorkerLost",
                f"worker {pod.index} ({pod.name}) was lost ({why}); "
                "restarting all workers from the latest checkpoint",
                warning=True,
            )
        st.attempt += 1
        st.resumed_from = "latest"
        self.plan.delete += [
            p.name for p in self.pods if not p.deleting and p.name not in self.plan.delete
        ]
        self.phase(
            Phase.PENDING, "Restarting", f"starting attempt {st.attempt} from the latest checkpoint"
        )
        return self.plan

    def _resize(self, was: int) -> Plan:
        """spec.resources.workers changed: the group restarts at its new size from the
        latest checkpoint (a rendezvous has a fixed world size). Neither a failure nor a
        lost worker."""
        st = self.st
        st.attempt += 1
        st.resumed_from = "latest"
        self.delete_active()
        workers = self.spec.resources.workers
        message = (
            f"spec.resources.workers changed from {was} to {workers}: "
            f"starting attempt {st.attempt} from the latest checkpoint"
        )
        self.event("Resized", message)
        self.phase(Phase.PENDING, "Resized", message)
        return self.plan

    def _start(self) -> bool:
        """Begin a new attempt (first start or resume); False when it cannot start."""
        st, wanted = self.st, self.spec.resume_from
        known = [c.id for c in st.checkpoints]
        if wanted and known and wanted not in known:
            self.fail(
                "CheckpointNotFound",
                f"spec.resumeFrom: checkpoint {wanted!r} does not exist; "
                f"available: {', '.join(known)}",
            )
            return False
        resuming = st.attempt > 0
        st.attempt += 1
        st.resumed_from = wanted or "latest"
        if resuming:
            self.event(
                "Resumed", f"resuming from checkpoint {wanted or st.latest_checkpoint or 'latest'}"
            )
        workers = self.spec.resources.workers
        if self.lookups.kueue_off:
            self._admit([], creating=False)
            return True
        if self.queue is not None:
            self.phase(
                Phase.QUEUED,
                "Resuming" if resuming else "Created",
                f"waiting for Kueue to admit {workers} worker(s) in LocalQueue {self.queue}, "
                f"attempt {st.attempt}",
            )
            return True
        self.phase(
            Phase.PENDING,
            "Resuming" if resuming else "Created",
            f"creating {workers} worker Pod(s), attempt {st.attempt}",
        )
        return True

    # -- Kueue ---------------------------------------------------------------------------

    def _admit(self, current: list[PodView], *, creating: bool) -> bool:
        """Whether the job's workers may be created: always, unless the job is queued in
        Kueue; then only once Kueue admitted its Workload, which covers every worker."""
        if self.lookups.kueue_off:
            self.phase(
                Phase.QUEUED, "KueueDisabled",
                "the job has the kueue.x-k8s.io/queue-name label, but this operator's Kueue "
                "integration is off (operator setting kueueEnabled, chart value kueue.enabled); "
                "remove the label to run the job without Kueue",
            )  # fmt: skip
            return False
        queue = self.queue
        if queue is None:
            return True
        st, wl, workers = self.st, self.wl, self.spec.resources.workers
        active = any(not p.finished for p in current)
        status = st.queue = st.queue or QueueStatus(name=queue)
        status.name = queue
        status.cluster_queue = self.lookups.cluster_queue or status.cluster_queue
        name = workload_name(self.job.metadata.name or "")
        if (
            wl is not None
            and not wl.deleting
            and (
                wl.finished
                or (wl.digest != digest_of(self.lookups.desired_workload) and not active)
            )
        ):
            self.plan.workload = WorkloadAction(
                "delete", "Replaced", "the job needs a new Workload"
            )
            wl = None
        if wl is None or wl.deleting:
            if wl is None and self.plan.workload is None:
                self.plan.workload = WorkloadAction("create")
            status.workload, status.admitted, status.flavors = name, False, None
            status.message = f"waiting for Kueue to take Workload {name}"
            if not active:
                self._queued("WaitingForAdmission", status.message)
            return False
        status.workload = wl.name
        if not wl.admitted:
            status.admitted, status.flavors = False, None
            status.position = self.lookups.position
            status.message = wl.pending_message or "waiting for quota"
            if not active:
                self._queued(wl.pending_reason or "Pending", status.message)
            return False
        status.cluster_queue = wl.cluster_queue or status.cluster_queue
        status.admitted, status.flavors, status.position = True, dict(wl.flavors) or None, None
        flavors = ", ".join(f"{r} from {f}" for r, f in sorted(wl.flavors.items()))
        status.message = f"admitted in ClusterQueue {wl.cluster_queue}" + (
            f" ({flavors})" if flavors else ""
        )
        if creating and st.phase is Phase.QUEUED:
            self.phase(
                Phase.PENDING, "Admitted",
                f"Kueue admitted all {workers} worker(s) in ClusterQueue {wl.cluster_queue}"
                f"{f' ({flavors})' if flavors else ''}: creating them, attempt {st.attempt}",
            )  # fmt: skip
        return True

    def _queued(self, reason: str, message: str) -> None:
        where = f"LocalQueue {self.queue}"
        if self.st.queue is not None and self.st.queue.cluster_queue:
            where += f" (ClusterQueue {self.st.queue.cluster_queue})"
        message = f"waiting in {where}: {message}"
        held = self.st.condition("Queued")
        if self.st.phase is Phase.QUEUED and held is not None and held.reason == "Preempted":
            # Still the preempted job until Kueue admits it again: the reason says so.
            latest, wl = self.st.latest_checkpoint, self.wl
            reason = "Preempted"
            message += "; preempted" + (
                f" for TrainingJob {wl.preemptor}" if wl and wl.preemptor else ""
            )
            message += f", resumes from checkpoint {latest}" if latest else ""
        self.phase(Phase.QUEUED, reason, message)

    def _evicted(self, wl: WorkloadView) -> Plan:
        """Kueue evicted the admitted Workload (preemption, a quota change, deactivation):
        the workers stop gracefully and checkpoint; once every one has stopped, the
        Workload's admission is cleared, which returns the quota, and the job waits in
        its queue to resume from that checkpoint. A restart, never a failure."""
        st = self.st
        reason = "Preempted" if wl.evicted_reason == "Preempted" else "Evicted"
        by = f" for TrainingJob {wl.preemptor}" if wl.preemptor else ""
        why = f"Kueue evicted the job{by} ({wl.evicted_reason}: {wl.evicted_message})"
        st.estimated_completion_time = None
        self.plan.delete += [p.name for p in self.pods if not p.deleting and not p.finished]
        if any(not p.finished and not self._abandoned(p) for p in self.pods):
            self.phase(
                Phase.STOPPING, reason,
                f"{why}; workers are writing a checkpoint before the quota is released",
            )  # fmt: skip
            return self.plan
        if any(p.attempt == st.attempt for p in self.pods):
            st.restarts += 1
            st.attempt += 1
            st.resumed_from = "latest"
        status = st.queue = st.queue or QueueStatus(name=self.queue or "")
        if st.phase is not Phase.QUEUED:  # not when retrying a release that did not go through
            status.preemptions += 1
        status.admitted, status.flavors = False, None
        status.message = f"evicted ({wl.evicted_reason}): {wl.evicted_message}"
        self.plan.workload = WorkloadAction("release", wl.evicted_reason, wl.evicted_message)
        latest = st.latest_checkpoint
        then = f"; resumes from checkpoint {latest} once admitted again" if latest else ""
        self.phase(Phase.QUEUED, reason, f"{why}; quota released, back in the queue{then}")
        return self.plan

    def _phase_from(self, current: list[PodView]) -> None:
        waiting = [p for p in current if p.unschedulable]
        if waiting:
            self.phase(Phase.QUEUED, "Unschedulable", waiting[0].unschedulable or "")
        elif any(p.running for p in current):
            self.st.start_time = self.st.start_time or self.now
            self.phase(Phase.RUNNING, "TrainerRunning", f"attempt {self.st.attempt} is training")

    def _estimate(self) -> None:
        st = self.st
        if st.progress is None:
            return
        remaining = estimate_remaining(st.progress)
        st.progress.remaining_seconds = remaining
        if remaining is None:
            return
        if st.phase is Phase.RUNNING:
            st.estimated_completion_time = (self.now + timedelta(seconds=remaining)).replace(
                microsecond=0
            )
        hourly = st.estimated_cost.hourly_usd if st.estimated_cost else None
        if hourly is not None:
            total = hourly * ((st.progress.elapsed_seconds or 0.0) + remaining) / 3600
            st.estimated_cost = EstimatedCost(hourly_usd=hourly, total_usd=round(total, 4))


def _completed(pod: PodView) -> Termination | bool:
    """Whether the worker ran to the end: exit code 0, or a failed exit after a termination
    message that says it completed (then the message)."""
    if pod.phase == "Succeeded":
        return True
    if pod.phase == "Failed" and pod.message:
        return parse_termination(pod.message) or False
    return False


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


def plan(
    job: TrainingJob,
    pods: list[PodView],
    *,
    now: datetime,
    settings: Settings,
    lookups: Lookups | None = None,
) -> Plan:
    """Decide what the job needs now; see the module docstring."""
    return _Planner(job, pods, now, settings, lookups or Lookups()).run()


def _size(size: int) -> str:
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
