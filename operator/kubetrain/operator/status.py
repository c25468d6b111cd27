"""Pure functions from observed objects to status: Pods, progress reports, cost, conditions.

Nothing here reads a clock or talks to the cluster; ``now`` is always passed in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kubetrain.api.children import (
    ANNOTATION_RESUME_FROM,
    ANNOTATION_WORKERS,
    LABEL_ATTEMPT,
    LABEL_STAGE,
    LABEL_WORKER,
)
from kubetrain.api.report import (
    ANNOTATION,
    EXIT_STOPPED,
    ProgressReport,
    ReportedModel,
    ReportError,
    decode,
)
from kubetrain.api.status import (
    Checkpoint,
    Condition,
    ConditionStatus,
    Metrics,
    ModelOutput,
    Progress,
    TrainingJobStatus,
)

DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempting",
        "PreemptionByScheduler",
        "DeletionByTaintManager",
        "EvictionByEvictionAPI",
        "DeletionByPodGC",
        "TerminationByKubelet",
        "NodeLost",
        "NodeShutdown",
        "Shutdown",
        "Terminated",
    }
)
"""Pod or DisruptionTarget reasons that mean the Pod was taken away, not that training failed."""

WAITING_FOR_A_PERSON = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Reasons a kubelet gives for a container that has not started and will not by itself
(an image it cannot pull, a Secret or ConfigMap that is missing): a person must act."""
WAITING_FOR_GOOD = frozenset({"InvalidImageName", "ErrImageNeverPull"})
"""Of those, the ones no wait can cure: the image's name, or a pull policy that forbids it."""

OWN_USE_EVICTION = ("exceeds the limit", "exceeds the total limit", "exceeded its local")
"""Phrases of the kubelet's eviction messages for a Pod over its own storage limits (its
emptyDir sizeLimit, its containers' ephemeral-storage limits): the trainer's doing."""


@dataclass(frozen=True)
class PodView:
    """What the reconciler needs to know about one worker Pod."""

    name: str
    uid: str
    index: int
    attempt: int
    phase: str
    deleting: bool
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    unschedulable: str | None = None
    disruption: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: str | None = None
    """The report's text as the Pod carries it (or as it was pushed), for its digest."""
    decoded: ProgressReport | None = None
    """The report, decoded once where it came in (the channel's door, or ``observe_pod``)."""
    problem: str | None = None
    """Why the report is ignored (it did not decode), or None."""
    resume_from: str = ""
    deletion_time: datetime | None = None
    node_lost: bool = False  # evicted because its node stopped reporting
    workers: int | None = None  # the size of the group it was started in
    stage: str = ""  # "fetch" for the fetch Pod; workers have none
    waiting: tuple[str, str] | None = None  # (kubelet reason, message) of a stuck container

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    @property
    def evicted_for_own_use(self) -> bool:
        """Evicted for storage it used beyond its own limits (a full /tmp): a failure."""
        return self.reason == "Evicted" and any(p in self.message for p in OWN_USE_EVICTION)

    @property
    def disrupted(self) -> bool:
        """Lost to preemption, eviction or node failure, or stopped resumably on SIGTERM."""
        if self.evicted_for_own_use:
            return False
        return (
            self.disruption is not None
            or self.reason in DISRUPTION_REASONS
            or self.exit_code == EXIT_STOPPED
        )


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def observe_pod(pod: dict[str, Any]) -> PodView:
    """Summarise a worker Pod (as a JSON dict) for decisions."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    view: dict[str, Any] = {
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "index": _int(labels.get(LABEL_WORKER), -1),
        "attempt": _int(labels.get(LABEL_ATTEMPT), 0),
        "phase": status.get("phase") or "Pending",
        "deleting": meta.get("deletionTimestamp") is not None,
        "deletion_time": _time(meta.get("deletionTimestamp")),
        "reason": status.get("reason") or "",
        "message": status.get("message") or "",
        "report": annotations.get(ANNOTATION),
        "resume_from": annotations.get(ANNOTATION_RESUME_FROM, ""),
        "workers": _int(annotations.get(ANNOTATION_WORKERS), 0) or None,
        "stage": labels.get(LABEL_STAGE, ""),
    }
    for condition in status.get("conditions") or []:
        kind, state = condition.get("type"), condition.get("status")
        if (
            kind == "PodScheduled"
            and state == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            view["unschedulable"] = condition.get("message") or "no node fits the Pod"
        if kind == "DisruptionTarget" and state == "True":
            view["disruption"] = condition.get("reason") or "Disrupted"
            view["node_lost"] = condition.get("reason") == "DeletionByTaintManager"
    containers = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    )
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_FOR_A_PERSON and "waiting" not in view:
            message = f"container {container.get('name')}: {waiting.get('message') or ''}"
            view["waiting"] = (waiting["reason"], message.strip().rstrip(":"))
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if running := state.get("running"):
            view["started_at"] = _time(running.get("startedAt"))
        if terminated := state.get("terminated"):
            view["exit_code"] = terminated.get("exitCode")
            view["reason"] = view["reason"] or terminated.get("reason") or ""
            view["message"] = (terminated.get("message") or view["message"]).strip()
            view["started_at"] = _time(terminated.get("startedAt"))
            view["finished_at"] = _time(terminated.get("finishedAt"))
    return with_report(PodView(**view), view["report"])


def with_report(pod: PodView, text: str | None) -> PodView:
    """The Pod with ``text`` as its report, decoded (once for each distinct text)."""
    if not text:
        return replace(pod, report=text, decoded=None, problem=None)
    decoded, problem = _decode(text)
    return replace(pod, report=text, decoded=decoded, problem=problem)


@functools.lru_cache(maxsize=4096)
def _decode(text: str) -> tuple[ProgressReport | None, str | None]:
    """A report's text decoded, or why not: every pass sees the same annotation again until
    the trainer writes a new one, so each text is decoded once (the models are read-only)."""
    try:
        return decode(text), None
    except ReportError as err:
        return None, str(err)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Conditions with ``type_`` set; lastTransitionTime moves only when status changes."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32_000],
        observed_generation=generation,
        last_transition_time=since,
    )
    return (
        [c for c in conditions if c.type != type_] + [new]
        if old is None
        else [new if c.type == type_ else c for c in conditions]
    )


def mirror_report(
    status: TrainingJobStatus, report: ProgressReport, claim_name: str
) -> TrainingJobStatus:
    """Status with the report's progress, metrics, checkpoints and model mirrored in."""
    old_progress = status.progress or Progress()
    total = report.total_steps or old_progress.total_steps  # early reports may lack totals
    percentage = round(100.0 * min(report.step, total) / total, 1) if total else None
    progress = old_progress.model_copy(
        update={
            "current_epoch": report.epoch,
            "total_epochs": report.total_epochs or old_progress.total_epochs,
            "current_step": report.step,
            "total_steps": report.total_steps or old_progress.total_steps,
            "percentage": percentage,
            "last_update_time": report.time,
        }
    )
    old_metrics = status.metrics or Metrics()
    best = old_metrics.best_loss
    if report.loss is not None:
        best = report.loss if best is None else min(best, report.loss)
    metrics = Metrics(
        current_loss=report.loss,
        best_loss=best,
        validation_loss=report.eval_loss
        if report.eval_loss is not None
        else old_metrics.validation_loss,
        learning_rate=report.learning_rate,
        throughput=report.throughput,
        throughput_unit=report.throughput_unit if report.throughput is not None else None,
        gpu_memory_bytes=report.gpu_memory_bytes,
        evaluation=dict(report.metrics) or old_metrics.evaluation,
    )
    update: dict[str, Any] = {"progress": progress, "metrics": metrics}
    if report.checkpoints:
        ordered = sorted(report.checkpoints, key=lambda c: (c.step, c.created_at))  # to show
        update["checkpoints"] = [
            Checkpoint(
                id=c.id,
                epoch=c.epoch,
                step=c.step,
                loss=c.loss,
                created_at=c.created_at,
                size_bytes=c.size_bytes,
                path=c.path,
            )
            for c in ordered
        ]
        update["latest_checkpoint"] = latest_checkpoint(report)
    if report.model is not None:
        update["model"] = model_output(report.model, claim_name)
    return status.model_copy(update=update)


def model_output(model: ReportedModel, claim_name: str) -> ModelOutput:
    """``status.model`` from where a trainer said its model is (a report, a termination)."""
    return ModelOutput(
        claim_name=claim_name,
        path=model.path,
        format=model.format or None,
        uri=model.uri or None,
        size_bytes=model.size_bytes or None,
        digest=model.digest or None,
    )


def latest_checkpoint(report: ProgressReport) -> str | None:
    """The report's latest checkpoint, as the trainer defines it: the last committed on the
    timeline being trained (``latestCheckpoint``), else the last listed (oldest commit first),
    never the highest step (an abandoned timeline's after a resume from an older one)."""
    listed = [c.id for c in report.checkpoints]
    if report.latest_checkpoint in listed:
        return report.latest_checkpoint
    return listed[-1] if listed else None


def estimate_remaining(progress: Progress) -> float | None:
    """Seconds left at the pace so far (elapsed time per step), None before the first step."""
    step, total, elapsed = progress.current_step, progress.total_steps, progress.elapsed_seconds
    if not step or not total or elapsed is None or step > total:
        return None
    return round(elapsed / step * (total - step), 1)
