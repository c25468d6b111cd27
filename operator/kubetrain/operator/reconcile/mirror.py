"""Mirroring: rank 0's newest report (pushed or annotated, decoded once at the door) into
status, never going back, and the Published condition from its last word."""

from __future__ import annotations

from kubetrain.api.children import checkpoint_claim_name
from kubetrain.api.report import ProgressReport
from kubetrain.api.status import ConditionStatus
from kubetrain.operator.reconcile.decision import Decision
from kubetrain.operator.status import PodView, mirror_report


def mirror_reports(d: Decision) -> None:
    """Mirror the newest valid report of worker 0 (rank 0 is the only reporter)."""
    reporters = sorted((p for p in d.pods if p.index == 0 and p.report), key=lambda p: p.attempt)
    for pod in reporters:
        if pod.problem is not None:
            d.plan.bad_reports.append((pod, pod.problem))
            continue
        report = pod.decoded
        if report is not None and not _behind(d, pod, report):
            d.plan.status = d.st = mirror_report(d.st, report, checkpoint_claim_name(d.job))
            if d.st.progress is not None:
                d.st.progress.attempt = pod.attempt
            if report.model is not None and d.spec.output is not None:
                _published(d, report.model.uri, report.model.upload_error)


def _behind(d: Decision, pod: PodView, report: ProgressReport) -> bool:
    """Whether ``report`` is older than what status shows: from an earlier attempt than
    the one status mirrors, or from the same attempt at an earlier step (e.g. the Pod's
    annotation read back after an operator restart, behind the pushed reports)."""
    shown = d.st.progress
    if shown is None or shown.attempt is None:
        return False
    if pod.attempt != shown.attempt:
        return pod.attempt < shown.attempt
    return report.step < (shown.current_step or 0)


def _published(d: Decision, uri: str, error: str) -> None:
    """The Published condition (and an Event when it changes) from rank 0's last word."""
    if not uri and not error:
        return
    old = d.st.condition("Published")
    status = ConditionStatus.TRUE if uri else ConditionStatus.FALSE
    reason = "Uploaded" if uri else "UploadFailed"
    target = d.spec.output.uri if d.spec.output else ""
    message = (
        f"the model is at {uri}"
        if uri
        else f"uploading to {target} failed: {error}; the model stays on the volume"
    )
    if old is not None and old.status == status and old.message == message:
        return
    d.condition("Published", status, reason, message)
    d.event(reason, message, warning=not uri)
