"""Queue admission through Kueue: a queued job's workers are created only once Kueue admitted
its Workload (all or nothing); an eviction stops them gracefully and releases the quota
once they have checkpointed; the Workload's PodsReady condition follows the workers."""

from __future__ import annotations

from kubetrain.api.status import Phase, QueueStatus
from kubetrain.operator.kueue import (
    WorkloadView,
    digest_of,
    pods_ready_changes,
    pods_ready_condition,
    workers_ready,
    workload_name,
)
from kubetrain.operator.reconcile.decision import Decision, Plan, WorkloadAction
from kubetrain.operator.status import PodView


def admit(d: Decision, current: list[PodView], *, creating: bool) -> bool:
    """Whether the job's workers may be created: always, unless the job is queued in Kueue;
    then only once Kueue admitted its Workload, which covers every worker."""
    if d.lookups.kueue_off:
        d.phase(
            Phase.QUEUED, "KueueDisabled",
            "the job has the kueue.x-k8s.io/queue-name label, but this operator's Kueue "
            "integration is off (operator setting kueueEnabled, chart value kueue.enabled); "
            "remove the label to run the job without Kueue",
        )  # fmt: skip
        return False
    queue = d.queue
    if queue is None:
        return True
    st, wl, workers = d.st, d.wl, d.spec.resources.workers
    active = any(not p.finished for p in current)
    status = st.queue = st.queue or QueueStatus(name=queue)
    status.name = queue
    status.cluster_queue = d.lookups.cluster_queue or status.cluster_queue
    name = workload_name(d.job.metadata.name or "")
    if (
        wl is not None
        and not wl.deleting
        and (wl.finished or (wl.digest != digest_of(d.lookups.desired_workload) and not active))
    ):
        d.plan.workload = WorkloadAction("delete", "Replaced", "the job needs a new Workload")
        wl = None
    if wl is None or wl.deleting:
        if wl is None and d.plan.workload is None:
            d.plan.workload = WorkloadAction("create")
        status.workload, status.admitted, status.flavors = name, False, None
        status.message = f"waiting for Kueue to take Workload {name}"
        if not active:
            _queued(d, "WaitingForAdmission", status.message)
        return False
    status.workload = wl.name
    if not wl.admitted:
        status.admitted, status.flavors = False, None
        status.position = d.lookups.position
        status.message = wl.pending_message or "waiting for quota"
        if not active:
            _queued(d, wl.pending_reason or "Pending", status.message)
        return False
    status.cluster_queue = wl.cluster_queue or status.cluster_queue
    status.admitted, status.flavors, status.position = True, dict(wl.flavors) or None, None
    flavors = ", ".join(f"{r} from {f}" for r, f in sorted(wl.flavors.items()))
    status.message = f"admitted in ClusterQueue {wl.cluster_queue}" + (
        f" ({flavors})" if flavors else ""
    )
    if creating and st.phase is Phase.QUEUED:
        d.phase(
            Phase.PENDING, "Admitted",
            f"Kueue admitted all {workers} worker(s) in ClusterQueue {wl.cluster_queue}"
            f"{f' ({flavors})' if flavors else ''}: creating them, attempt {st.attempt}",
        )  # fmt: skip
    return True


def _queued(d: Decision, reason: str, message: str) -> None:
    where = f"LocalQueue {d.queue}"
    if d.st.queue is not None and d.st.queue.cluster_queue:
        where += f" (ClusterQueue {d.st.queue.cluster_queue})"
    message = f"waiting in {where}: {message}"
    held = d.st.condition("Queued")
    if d.st.phase is Phase.QUEUED and held is not None and held.reason == "Preempted":
        # Still the preempted job until Kueue admits it again: the reason says so.
        latest, wl = d.st.latest_checkpoint, d.wl
        reason = "Preempted"
        message += "; preempted" + (
            f" for TrainingJob {wl.preemptor}" if wl and wl.preemptor else ""
        )
        message += f", resumes from checkpoint {latest}" if latest else ""
    d.phase(Phase.QUEUED, reason, message)


def evicted(d: Decision, wl: WorkloadView) -> Plan:
    """Kueue evicted the admitted Workload (preemption, a quota change, deactivation): the
    workers stop gracefully and checkpoint; once every one has stopped, the Workload's
    admission is cleared, which returns the quota, and the job waits in its queue to resume
    from that checkpoint. A restart, never a failure."""
    st = d.st
    reason = "Preempted" if wl.evicted_reason == "Preempted" else "Evicted"
    by = f" for TrainingJob {wl.preemptor}" if wl.preemptor else ""
    why = f"Kueue evicted the job{by} ({wl.evicted_reason}: {wl.evicted_message})"
    st.estimated_completion_time = None
    d.plan.delete += [p.name for p in d.pods if not p.deleting and not p.finished]
    if any(not p.finished and not d.abandoned(p) for p in d.pods):
        d.phase(
            Phase.STOPPING, reason,
            f"{why}; workers are writing a checkpoint before the quota is released",
        )  # fmt: skip
        return d.plan
    if any(p.attempt == st.attempt for p in d.pods):
        st.restarts += 1
        st.attempt += 1
        st.resumed_from = "latest"
    status = st.queue = st.queue or QueueStatus(name=d.queue or "")
    if st.phase is not Phase.QUEUED:  # not when retrying a release that did not go through
        status.preemptions += 1
    status.admitted, status.flavors = False, None
    status.message = f"evicted ({wl.evicted_reason}): {wl.evicted_message}"
    d.plan.workload = WorkloadAction("release", wl.evicted_reason, wl.evicted_message)
    latest = st.latest_checkpoint
    then = f"; resumes from checkpoint {latest} once admitted again" if latest else ""
    d.phase(Phase.QUEUED, reason, f"{why}; quota released, back in the queue{then}")
    return d.plan


def stopped(d: Decision, reason: str, message: str) -> None:
    """A stopped job's Workload goes, and its quota with it."""
    if d.wl is not None and not d.wl.deleting:
        d.plan.workload = WorkloadAction("delete", reason, message)
    if d.st.queue is not None:
        queue = d.st.queue
        queue.admitted, queue.flavors, queue.position = False, None, None
        queue.message = f"quota released: {message}"


def pods_ready(d: Decision, current: list[PodView]) -> None:
    """Keep the admitted Workload's PodsReady condition as Kueue's job framework keeps it:
    True once every worker of the attempt runs, False (WaitForRecovery) when one is lost
    after that. A Workload without the condition is left without it until its workers run:
    Kueue times the start from the admission, and a write would say nothing new."""
    wl = d.wl
    if wl is None or not wl.admitted or wl.deleting or wl.finished or d.plan.workload:
        return
    ready = workers_ready(current, d.spec.resources.workers, d.st.attempt)
    wanted, _, _ = pods_ready_condition(wl, ready)
    if not wanted and not wl.pods_ready_reason:
        return
    if pods_ready_changes(wl, ready):
        d.plan.workload = WorkloadAction("ready", ready=ready)
