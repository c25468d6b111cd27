"""Attempts: a job runs as numbered attempts of its whole worker group. This stage starts
one (first start or resume), restarts it after a failure or a lost worker (each bounded),
resizes it, stops it gracefully, tells it completed, and fails it when its containers wait
for a person."""

from __future__ import annotations

from kubetrain.api.children import checkpoint_claim_name
from kubetrain.api.report import EXIT_PERMANENT, read_permanent
from kubetrain.api.status import SPEC_ERRORS, ConditionStatus, Phase
from kubetrain.api.termination import Termination, parse_termination
from kubetrain.operator.reconcile import admission
from kubetrain.operator.reconcile.decision import Decision, Plan
from kubetrain.operator.status import WAITING_FOR_GOOD, PodView, model_output

CONTAINERS_WAITING = "ContainersWaiting"
"""The condition of containers that wait for a person to act (see ``stuck``)."""


def completed(pod: PodView) -> Termination | bool:
    """Whether the worker ran to the end: exit code 0, or a failed exit after a termination
    message that says it completed (then the message)."""
    if pod.phase == "Succeeded":
        return True
    if pod.phase == "Failed" and pod.message:
        return parse_termination(pod.message) or False
    return False


def retryable(d: Decision) -> bool:
    """A failure for a spec error, of an earlier generation: the new spec gets its try."""
    failed = d.st.condition("Failed")
    return (
        failed is not None
        and failed.reason in SPEC_ERRORS
        and failed.observed_generation != d.generation
    )


def hold(d: Decision) -> tuple[str, str] | None:
    """Why the job must not run now (suspended, over budget), or None."""
    if d.spec.suspend:
        return "Suspended", "spec.suspend is true"
    ceiling = d.spec.run_policy.max_cost_usd
    spent = (d.st.resource_usage.cost_usd or 0.0) if d.st.resource_usage else 0.0
    if ceiling is not None and spent >= ceiling:
        return (
            "CostLimitReached",
            f"resourceUsage.costUSD {spent:.2f} reached spec.runPolicy.maxCostUSD "
            f"{ceiling:.2f}; raise the limit to resume",
        )
    return None


def stop(d: Decision, reason: str, message: str) -> Plan:
    """Stop gracefully (workers checkpoint); Stopped once none runs, its quota released."""
    d.delete_active()
    d.st.estimated_completion_time = None
    if any(not p.finished for p in d.pods + d.fetchers):
        d.phase(Phase.STOPPING, "Stopping", f"{message}: workers are writing a checkpoint")
        return d.plan
    latest = d.st.latest_checkpoint
    where = f"; latest checkpoint {latest}" if latest else ""
    d.phase(Phase.STOPPED, reason, f"{message}{where}")
    admission.stopped(d, reason, message)
    return d.plan


def complete(d: Decision, said: list[Termination]) -> Plan:
    """Every worker finished its run: by exit code 0, or by its termination message when
    its exit code was lost to the end of the process (a final report it could not
    deliver, a thread the interpreter aborted on)."""
    st = d.st
    told = next((t.model for t in said if t.model is not None), None)
    if told is not None and (st.model is None or not st.model.path):
        st.model = model_output(told, checkpoint_claim_name(d.job))
    if said:
        d.event(
            "CompletedWithoutReport",
            f"the trainer said it completed (step {said[0].step}) in its termination "
            "message; its final progress report never arrived",
        )
    st.completion_time = d.now
    st.estimated_completion_time = None
    if st.progress is not None:
        st.progress.remaining_seconds = 0.0
        if st.progress.total_steps:
            st.progress.current_step = st.progress.total_steps
            st.progress.percentage = 100.0
    where = f"; model at {st.model.path}" if st.model and st.model.path else ""
    d.phase(Phase.COMPLETED, "TrainingSucceeded", f"all workers finished{where}")
    d.finish_workload(succeeded=True, message=f"all workers finished{where}")
    return d.plan


def stuck(d: Decision, current: list[PodView]) -> bool:
    """Containers that wait for a person (an image that cannot be pulled, a missing
    Secret): ``ContainersWaiting`` carries the kubelet's word at once, and the job fails
    once they waited ``containerWaitingGraceSeconds`` (at once where no wait can help).
    True when the job failed."""
    active = [p for p in current + d.fetchers if not p.deleting and not p.finished]
    waiting = next((p for p in active if p.waiting), None)
    old = d.st.condition(CONTAINERS_WAITING)
    if waiting is None or waiting.waiting is None:
        if old is not None and old.status is ConditionStatus.TRUE:
            d.condition(
                CONTAINERS_WAITING, ConditionStatus.FALSE, "ContainersStarted",
                "every container started",
            )  # fmt: skip
        return False
    reason, detail = waiting.waiting
    who = f"the fetch Pod {waiting.name}" if waiting.stage == "fetch" else (
        f"worker {waiting.index} ({waiting.name})"
    )  # fmt: skip
    message = f"{who}: {reason}: {detail}"
    if old is None or old.status is not ConditionStatus.TRUE:
        d.event(reason, message, warning=True)
    d.condition(CONTAINERS_WAITING, ConditionStatus.TRUE, reason, message)
    since = d.st.condition(CONTAINERS_WAITING).last_transition_time  # type: ignore[union-attr]
    grace = d.settings.container_waiting_grace_seconds
    waited = (d.now - since).total_seconds() if since else 0.0
    if reason in WAITING_FOR_GOOD:
        d.fail(reason, message)
        return True
    if waited >= grace:
        d.fail(
            reason,
            f"{message} (waited {waited:.0f}s; the operator's containerWaitingGraceSeconds "
            f"is {grace})",
        )
        return True
    d.later(grace - waited)
    return False


def restart(d: Decision, failed: list[PodView], lost: list[PodView]) -> Plan:
    """A worker failed (counted against backoffLimit) or was lost (counted against
    maxRestarts): the whole group starts its next attempt from the latest checkpoint."""
    st, limit = d.st, d.spec.run_policy.backoff_limit
    broken = [p for p in failed if not p.disrupted]
    permanent = next((p for p in broken if p.exit_code == EXIT_PERMANENT), None)
    if permanent is not None:  # bad configuration or data: no retry can cure it
        reason, message = read_permanent(permanent.message)
        return d.fail(reason, f"worker {permanent.index} ({permanent.name}): {message}")
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
            return d.fail(
                "BackoffLimitExceeded",
                f"{detail}; {st.failures} failures exceed spec.runPolicy.backoffLimit ({limit})",
            )
        d.event(
            "TrainerFailed",
            f"{detail}; restarting from the latest checkpoint "
            f"(failure {st.failures} of {limit} allowed)",
            warning=True,
        )
    else:
        pod = (failed + lost)[0]
        why = pod.disruption or pod.reason or ("deleted" if pod.deleting else "stopped")
        st.restarts += 1
        most = d.spec.run_policy.max_restarts
        if st.restarts > most:
            return d.fail(
                "RestartLimitExceeded",
                f"worker {pod.index} ({pod.name}) was lost ({why}); {st.restarts} restarts "
                f"exceed spec.runPolicy.maxRestarts ({most})",
            )
        d.event(
            "WorkerLost",
            f"worker {pod.index} ({pod.name}) was lost ({why}); "
            "restarting all workers from the latest checkpoint",
            warning=True,
        )
    st.attempt += 1
    st.resumed_from = "latest"
    d.plan.delete += [p.name for p in d.pods if not p.deleting and p.name not in d.plan.delete]
    d.phase(
        Phase.PENDING, "Restarting", f"starting attempt {st.attempt} from the latest checkpoint"
    )
    return d.plan


def resize(d: Decision, was: int) -> Plan:
    """spec.resources.workers changed: the group restarts at its new size from the latest
    checkpoint (a rendezvous has a fixed world size). Neither a failure nor a lost worker."""
    st = d.st
    st.attempt += 1
    st.resumed_from = "latest"
    d.delete_active()
    message = (
        f"spec.resources.workers changed from {was} to {d.spec.resources.workers}: "
        f"starting attempt {st.attempt} from the latest checkpoint"
    )
    d.event("Resized", message)
    d.phase(Phase.PENDING, "Resized", message)
    return d.plan


def start(d: Decision) -> bool:
    """Begin a new attempt (first start or resume); False when it cannot start."""
    st, wanted = d.st, d.spec.resume_from
    known = [c.id for c in st.checkpoints]
    if wanted and known and wanted not in known:
        d.fail(
            "CheckpointNotFound",
            f"spec.resumeFrom: checkpoint {wanted!r} does not exist; available: {', '.join(known)}",
        )
        return False
    resuming = st.attempt > 0
    st.attempt += 1
    st.resumed_from = wanted or "latest"
    if resuming:
        d.event("Resumed", f"resuming from checkpoint {wanted or st.latest_checkpoint or 'latest'}")
    workers = d.spec.resources.workers
    reason = "Resuming" if resuming else "Created"
    if d.lookups.kueue_off:
        admission.admit(d, [], creating=False)
    elif d.queue is not None:
        d.phase(
            Phase.QUEUED,
            reason,
            f"waiting for Kueue to admit {workers} worker(s) in LocalQueue {d.queue}, "
            f"attempt {st.attempt}",
        )
    else:
        d.phase(Phase.PENDING, reason, f"creating {workers} worker Pod(s), attempt {st.attempt}")
    return True


def phase_from(d: Decision, current: list[PodView]) -> None:
    """Running once a worker runs; Queued (Unschedulable) while one finds no node."""
    waiting = [p for p in current if p.unschedulable]
    if waiting:
        d.phase(Phase.QUEUED, "Unschedulable", waiting[0].unschedulable or "")
    elif any(p.running for p in current):
        d.st.start_time = d.st.start_time or d.now
        d.phase(Phase.RUNNING, "TrainerRunning", f"attempt {d.st.attempt} is training")
