"""What one pass decides, and the state every stage of the plan shares.

``Plan`` is the answer (the new status and the actions that follow it); ``Lookups`` are the
cluster facts the reconciler gathered for the pass; ``Decision`` is the plan being made,
with the few moves every stage uses: set the phase with its condition and Event, fail,
stop what runs. The stages (``fetching``, ``admission``, ``attempts``, ``accounting``,
``mirror``) are functions of a ``Decision``; ``plan.plan`` runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetrain.api.job import TrainingJob
from kubetrain.api.status import (
    SPEC_ERRORS,
    ConditionStatus,
    Phase,
    TrainingJobStatus,
)
from kubetrain.operator.kueue import WorkloadView
from kubetrain.operator.placement import Placement
from kubetrain.operator.reconcile.refusals import Refusal
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView, set_condition

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
    Workload's admission, returning its quota), finish (mark it Finished) or ready (set its
    PodsReady condition to ``ready``)."""

    kind: str
    reason: str = ""
    message: str = ""
    ready: bool = False


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
class CreationRefused:
    """Worker Pods the API server would not create yet (a quota, a missing PriorityClass,
    a name still held by an earlier job): the reconciler's word, retried at ``retry_at``."""

    message: str
    retry_at: datetime


@dataclass(frozen=True)
class Lookups:
    """What the reconciler looked up in the cluster for this pass (the plan stays pure)."""

    placement: Placement | None = None
    """The job's GPU type resolved against the catalogue (None: the type is unknown)."""
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
    creation_refused: CreationRefused | None = None
    """The last creation of the attempt's Pods was refused: say so, and wait to retry."""


class Decision:
    """The plan being made for one job in one pass."""

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
                self.condition(condition.type, ConditionStatus.FALSE, reason, message)
        if kind is not None:
            self.condition(kind, ConditionStatus.TRUE, reason, message)
        if previous != phase:
            st.phase = phase
            # Pending -> Running is routine: the Running condition records it, an Event (a
            # write for the whole cluster) would not add to it. After a wait it is news.
            if not (phase is Phase.RUNNING and previous is Phase.PENDING):
                self.event(reason, message, warning=warning or phase is Phase.FAILED)

    def condition(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        """Set the condition ``type_`` (its transition time moves only with its status)."""
        self.st.conditions = set_condition(
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

    def later(self, seconds: float) -> None:
        """Look again within ``seconds`` (the soonest of every stage's wishes)."""
        wanted = self.plan.requeue_after
        self.plan.requeue_after = seconds if wanted is None else min(wanted, seconds)

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
        self.finish_workload(succeeded=False, message=message)
        return self.plan

    def finish_workload(self, *, succeeded: bool, message: str) -> None:
        """A finished job's Workload is marked Finished: Kueue frees its quota at once."""
        wl = self.wl
        if wl is not None and not wl.finished and not wl.deleting:
            reason = "Succeeded" if succeeded else "Failed"
            self.plan.workload = WorkloadAction("finish", reason, message)
        if self.st.queue is not None:
            self.st.queue.admitted, self.st.queue.position = False, None

    def abandoned(self, pod: PodView) -> bool:
        """A Pod of an earlier attempt that will never confirm its end: its node is lost
        (evicted by the node lifecycle controller), or it is past its deletion deadline by
        more than lostNodeGraceSeconds. A new attempt does not wait for it."""
        grace = timedelta(seconds=self.settings.lost_node_grace_seconds)
        overdue = pod.deletion_time is not None and self.now - pod.deletion_time > grace
        return pod.deleting and (pod.node_lost or overdue)
