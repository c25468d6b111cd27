"""The reconciler's decisions, as one pure function of the job, its Pods and the time.

``plan`` looks at what is (the TrainingJob with its last written status, the worker Pods,
the cluster facts in ``Lookups``) and says what should be: the new status, which Pods to
create or delete, which Events to post. It is level-based: running it twice on the same
inputs gives the same answer, and a crash between any two actions is repaired by the next
run. Status is built here and nowhere else.

The stages run in this order, each in its own module:
``mirror`` (rank 0's report into status) and ``accounting`` (usage, cost, estimates);
``attempts`` (hold, complete, restart, resize, start); ``fetching`` (the fetch stage before
a first attempt); ``admission`` (Kueue).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kubetrain.api.fetch import fetch_sources
from kubetrain.api.job import TrainingJob
from kubetrain.api.status import ConditionStatus, Phase, TrainingJobStatus
from kubetrain.api.termination import Termination
from kubetrain.operator.placement import placement_for
from kubetrain.operator.reconcile import accounting, admission, attempts, fetching, mirror
from kubetrain.operator.reconcile.decision import (
    CreationRefused,
    Decision,
    Event,
    Lookups,
    Plan,
    WorkloadAction,
)
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView, set_condition

__all__ = ["CreationRefused", "Event", "Lookups", "Plan", "WorkloadAction", "invalid", "plan"]

CREATION_FAILED = "PodCreationFailed"
DATASET_CLAIM_GRACE = timedelta(seconds=10)
"""How long a job waits for its dataset claim (applied with it, a moment later) to appear."""


def plan(
    job: TrainingJob,
    pods: list[PodView],
    *,
    now: datetime,
    settings: Settings,
    lookups: Lookups | None = None,
) -> Plan:
    """Decide what the job needs now; see the module docstring."""
    d = Decision(job, pods, now, settings, lookups or Lookups())
    _run(d)
    _creation(d)
    return d.plan


def invalid(status: TrainingJobStatus, generation: int | None, message: str, now: datetime) -> Plan:
    """The plan for a body the models reject (e.g. stored before a CRD upgrade): Failed
    with the field and why, once per generation; never retried."""
    failed = status.condition("Failed")
    done = Plan(status=status.model_copy(deep=True))
    if failed and failed.reason == "InvalidSpec" and failed.observed_generation == generation:
        return done
    st = done.status
    st.phase, st.observed_generation = Phase.FAILED, generation
    st.conditions = set_condition(
        st.conditions, "Failed", ConditionStatus.TRUE, "InvalidSpec", message,
        generation=generation, now=now,
    )  # fmt: skip
    done.events.append(Event("Warning", "InvalidSpec", message))
    return done


def _run(d: Decision) -> Plan:
    st, spec = d.st, d.spec
    if st.phase is Phase.COMPLETED or (st.phase is Phase.FAILED and not attempts.retryable(d)):
        return _finished(d)
    refusal = d.lookups.refusal
    if refusal is not None and refusal.generation in (None, d.generation):
        return d.fail(refusal.reason, refusal.message)

    placement = d.lookups.placement or placement_for(spec, d.settings)
    if placement is None:
        catalogue = d.settings.catalogue
        return d.fail(
            "UnknownGPUType",
            f"spec.resources.gpuType: {catalogue.gpu_type_for(spec)!r} is not in the "
            f"operator's GPU catalogue; available types: {', '.join(catalogue.names)}",
        )
    d.plan.placement = placement
    accounting.account(d, placement)
    mirror.mirror_reports(d)

    current = [p for p in d.pods if p.attempt == st.attempt]
    d.plan.delete += [p.name for p in d.pods if p.attempt != st.attempt and not p.deleting]

    workers = spec.resources.workers
    ended = {p.name: attempts.completed(p) for p in current}
    if st.attempt and len(current) == workers and all(ended.values()):
        return attempts.complete(d, [t for t in ended.values() if isinstance(t, Termination)])

    if hold := attempts.hold(d):
        return attempts.stop(d, *hold)
    if d.wl is not None and d.wl.evicted_reason and d.wl.quota_reserved:
        return admission.evicted(d, d.wl)

    # Training time (progress.elapsedSeconds) excludes every stop: a job stopped past the
    # deadline's wall-clock time is not failed for it, on resume or ever.
    deadline = spec.run_policy.active_deadline_seconds
    trained = (st.progress.elapsed_seconds or 0.0) if st.progress else 0.0
    if deadline and trained >= deadline:
        return d.fail(
            "DeadlineExceeded",
            f"the job trained {trained:.0f}s, longer than "
            f"spec.runPolicy.activeDeadlineSeconds ({deadline}s)",
        )

    failed = [p for p in current if p.phase == "Failed" and not ended[p.name]]
    lost = [p for p in current if p.deleting and not p.finished]
    if failed or lost:
        return attempts.restart(d, failed, lost)
    if attempts.stuck(d, current):
        return d.plan
    resized = [p for p in current if p.workers not in (None, workers) and not p.finished]
    if resized:
        return attempts.resize(d, resized[0].workers or 0)

    # A first start, a resume, or a run after a spec error cured by a new generation.
    if st.attempt == 0 or st.phase in (Phase.STOPPED, Phase.FAILED, Phase.INITIALIZING):
        if d.lookups.dataset_claim_missing:
            return _no_dataset_claim(d)
        if fetch_sources(spec) and not fetching.fetched(d) and not fetching.fetch(d):
            return d.plan
        if not attempts.start(d):
            return d.plan
        current = []

    d.plan.resume_from = st.resumed_from or "latest"
    if any(p.attempt != st.attempt and not d.abandoned(p) for p in d.pods):
        return d.plan  # the previous attempt's Pods are still stopping: wait for them
    present = {p.index for p in current}
    missing = [i for i in range(workers) if i not in present]
    if admission.admit(d, current, creating=bool(missing)):
        d.plan.create = missing
        attempts.phase_from(d, current)
        admission.pods_ready(d, current)
    accounting.estimate(d)
    return d.plan


def _finished(d: Decision) -> Plan:
    """A completed or failed job: nothing runs, its quota is freed, its TTL counts down."""
    d.delete_active()
    condition = d.st.condition(str(d.st.phase)) if d.st.phase else None
    d.finish_workload(
        succeeded=d.st.phase is Phase.COMPLETED, message=condition.message if condition else ""
    )
    ttl = d.spec.run_policy.ttl_seconds_after_finished
    done = d.st.completion_time
    if ttl is not None and done is not None:
        left = (done + timedelta(seconds=ttl) - d.now).total_seconds()
        if left <= 0:
            d.plan.delete_job = True
        else:
            d.later(left)
    return d.plan


def _no_dataset_claim(d: Decision) -> Plan:
    claim = d.spec.dataset.pvc.claim_name if d.spec.dataset.pvc else ""
    created = d.job.metadata.creation_timestamp
    if created is not None and d.now - created < DATASET_CLAIM_GRACE:
        d.later(2.0)
        return d.plan
    return d.fail(
        "DatasetNotFound",
        f"spec.dataset.pvc.claimName: there is no PersistentVolumeClaim {claim!r} in "
        f"namespace {d.job.metadata.namespace}",
    )


def _creation(d: Decision) -> None:
    """``PodCreationFailed`` from the reconciler's last creation: True with the API server's
    words (and an Event when they change) while refused, the creation held until its retry
    is due; False once every Pod of the attempt was created."""
    refused, old = d.lookups.creation_refused, d.st.condition(CREATION_FAILED)
    if d.st.phase in (Phase.FAILED, Phase.COMPLETED, Phase.STOPPED):
        return  # the last word stays (a job failed for it keeps saying why)
    if refused is None:
        if old is not None and old.status is ConditionStatus.TRUE:
            d.condition(
                CREATION_FAILED, ConditionStatus.FALSE, "PodsCreated",
                "every worker Pod of the attempt was created",
            )  # fmt: skip
        return
    if old is None or (old.status, old.message) != (ConditionStatus.TRUE, refused.message):
        d.event("FailedCreatePod", refused.message, warning=True)
    d.condition(CREATION_FAILED, ConditionStatus.TRUE, "FailedCreatePod", refused.message)
    left = (refused.retry_at - d.now).total_seconds()
    if left > 0 and (d.plan.create or d.plan.fetch is not None):
        d.plan.create, d.plan.fetch = [], None
        d.later(left)
