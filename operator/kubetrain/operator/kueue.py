"""Admission through Kueue: each queued TrainingJob owns one Workload.

The operator follows Kueue's job-framework contract itself, the way Kueue's own
integrations do for batch/v1 Jobs:

- it creates the job's Workload (one pod set, every worker, with the workers' requests and
  placement) and creates no worker Pod until Kueue admits it: all or nothing;
- on admission it creates the workers with the admitted flavor's node labels and taints;
- when Kueue evicts the Workload (preemption, a quota change, deactivation) it stops the
  workers gracefully (they checkpoint), and only once they have stopped does it clear the
  Workload's admission, which returns the quota: the checkpoint is committed first;
- a finished job's Workload is marked ``Finished``; a stopped job's is deleted. Both free
  the quota at once. The Workload is owned by the job, so deleting the job frees it too;
- it keeps the Workload's ``PodsReady`` condition as the framework does for its jobs
  (``pods_ready``): Kueue's waitForPodsReady evicts an admitted Workload that does not reach
  ``PodsReady=True`` within its timeout, or does not get back to it within its recovery
  timeout after a worker failed.

This module turns Workload objects into the plan's view of them, and the plan's decisions
into Workload bodies; the plan stays a pure function.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetrain.api.base import GROUP, KIND, VERSION
from kubetrain.api.children import LABEL_JOB, MANAGED_BY
from kubetrain.api.job import TrainingJob
from kubetrain.operator.status import PodView

JSON = dict[str, Any]
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
WORKLOADS = "workloads"
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""On a TrainingJob: the LocalQueue (in its namespace) that admits it."""
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""On the Workload: Kueue names the job behind a preemptor by it."""
ANNOTATION_SHAPE = "kubetrain.io/pod-set-digest"
"""On the Workload: digest of its pod set, to tell when the job's shape has changed."""
POD_SET = "workers"
_REQUEUED_REASONS = ("Preempted", "NodeFailures")
"""Evictions after which Kueue puts the Workload back in its queue (as its jobs do)."""
_PREEMPTOR = re.compile(r"JobUID: (?P<uid>[0-9a-f-]+)")

PODS_READY = "PodsReady"
"""The Workload condition Kueue's waitForPodsReady times: written by the job's controller."""
WAIT_FOR_START = "WaitForStart"
"""PodsReady=False: admitted, not every worker running yet (or not admitted at all)."""
WAIT_FOR_RECOVERY = "WaitForRecovery"
"""PodsReady=False: every worker had been running, and one has stopped since."""
STARTED = "Started"
"""PodsReady=True: every worker running, the first time."""
RECOVERED = "Recovered"
"""PodsReady=True: every worker running again after a WaitForRecovery."""
_PODS_READY_MESSAGES = {  # Kueue's job framework's words, as its own jobs show them
    WAIT_FOR_START: "Not all pods are ready or succeeded",
    WAIT_FOR_RECOVERY: "At least one pod has failed, waiting for recovery",
    STARTED: "All pods reached readiness and the workload is running",
    RECOVERED: "All pods reached readiness and the workload is running",
}


def workload_name(job: str) -> str:
    return f"trainingjob-{job}"[:253]


@dataclass(frozen=True)
class WorkloadView:
    """What the plan needs to know of a job's Workload."""

    name: str
    uid: str
    digest: str
    deleting: bool = False
    quota_reserved: bool = False
    admitted: bool = False
    finished: bool = False
    cluster_queue: str = ""
    flavors: dict[str, str] = field(default_factory=dict)
    """Resource name -> ResourceFlavor, while admitted."""
    pending_reason: str = ""
    pending_message: str = ""
    """Why Kueue has not reserved quota yet (its QuotaReserved=False condition)."""
    evicted_reason: str = ""
    evicted_message: str = ""
    """Set while Kueue's Evicted condition is True."""
    preemptor_uid: str = ""
    """The uid of the job whose admission evicted this one, where Kueue names it."""
    preemptor: str = ""
    """The TrainingJob behind ``preemptor_uid`` (filled by the reconciler), if known."""
    pods_ready: bool = False
    """Its PodsReady condition is True."""
    pods_ready_reason: str = ""
    """That condition's reason ("" while the Workload has none): ``STARTED``, ``RECOVERED``,
    ``WAIT_FOR_START`` or ``WAIT_FOR_RECOVERY``."""


def _conditions(body: JSON) -> dict[str, JSON]:
    return {c.get("type", ""): c for c in (body.get("status") or {}).get("conditions") or []}


def _true(conditions: dict[str, JSON], kind: str) -> bool:
    return (conditions.get(kind) or {}).get("status") == "True"


def digest_of(body: JSON | None) -> str:
    """The pod-set digest a Workload body was made with ("" for none)."""
    meta = (body or {}).get("metadata") or {}
    return str((meta.get("annotations") or {}).get(ANNOTATION_SHAPE, ""))


def view(body: JSON) -> WorkloadView:
    meta, status = body["metadata"], body.get("status") or {}
    conditions = _conditions(body)
    admission = status.get("admission") or {}
    flavors: dict[str, str] = {}
    for assignment in admission.get("podSetAssignments") or []:
        flavors.update(assignment.get("flavors") or {})
    reserved = _true(conditions, "QuotaReserved")
    pending = {} if reserved else conditions.get("QuotaReserved") or {}
    evicted = (conditions.get("Evicted") or {}) if _true(conditions, "Evicted") else {}
    preempted = str((conditions.get("Preempted") or {}).get("message", "")) if evicted else ""
    found = _PREEMPTOR.search(preempted)
    return WorkloadView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        digest=digest_of(body),
        deleting=bool(meta.get("deletionTimestamp")),
        quota_reserved=reserved,
        admitted=_true(conditions, "Admitted"),
        finished=_true(conditions, "Finished"),
        cluster_queue=str(admission.get("clusterQueue", "")),
        flavors=flavors,
        pending_reason=str(pending.get("reason", "")),
        pending_message=str(pending.get("message", "")),
        evicted_reason=str(evicted.get("reason", "")),
        evicted_message=preempted or str(evicted.get("message", "")),
        preemptor_uid=found.group("uid") if found else "",
        pods_ready=_true(conditions, PODS_READY),
        pods_ready_reason=str((conditions.get(PODS_READY) or {}).get("reason", "")),
    )


def requeued_after(reason: str) -> bool:
    return reason in _REQUEUED_REASONS


def pod_set(worker: JSON, count: int) -> JSON:
    """The Workload's one pod set: ``count`` workers shaped like ``worker`` (a rendered
    worker Pod), cut to what admission reads (requests, placement)."""
    spec = worker["spec"]
    template: JSON = {
        "containers": [
            {"name": c["name"], "resources": c.get("resources") or {}} for c in spec["containers"]
        ]
    }
    for key in ("nodeSelector", "affinity", "tolerations", "priorityClassName"):
        if spec.get(key):
            template[key] = spec[key]
    return {"name": POD_SET, "count": count, "template": {"spec": template}}


def digest(pods: JSON, queue: str, priority: tuple[str, int] | None) -> str:
    """What makes a Workload the right one for the job: its pod set, queue and priority."""
    text = json.dumps([pods, queue, priority], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def workload(job: TrainingJob, worker: JSON, queue: str, priority: tuple[str, int] | None) -> JSON:
    """The job's Workload: owned by the job, in its LocalQueue, at its priority."""
    meta = job.metadata
    name = meta.name or ""
    pods = pod_set(worker, job.spec.resources.workers)
    spec: JSON = {"queueName": queue, "podSets": [pods]}
    if priority is not None:
        spec["priorityClassRef"] = {
            "group": KUEUE_GROUP,
            "kind": "WorkloadPriorityClass",
            "name": priority[0],
        }
        spec["priority"] = priority[1]
    return {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "Workload",
        "metadata": {
            "name": workload_name(name),
            "namespace": meta.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                LABEL_JOB: name,
                JOB_UID_LABEL: meta.uid or "",
            },
            "annotations": {ANNOTATION_SHAPE: digest(pods, queue, priority)},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def _set(
    conditions: list[JSON],
    kind: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> list[JSON]:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = next((c for c in conditions if c.get("type") == kind), None)
    since = old.get("lastTransitionTime", stamp) if old and old.get("status") == status else stamp
    out = [c for c in conditions if c.get("type") != kind]
    out.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message[:32768],
            "observedGeneration": generation or 0,
            "lastTransitionTime": since,
        }
    )
    return out


def released(body: JSON, reason: str, message: str, now: datetime) -> JSON:
    """``body`` with its admission cleared after an eviction: quota back to the
    ClusterQueue, and back in the queue when Kueue requeues that kind of eviction. A
    PodsReady condition goes back to False/WaitForStart, as the job framework writes it for
    a Workload no longer admitted: the next admission is a new start, timed from itself."""
    status = dict(body.get("status") or {})
    status.pop("admission", None)
    generation = body["metadata"].get("generation")
    conditions = list(status.get("conditions") or [])
    requeue = "True" if requeued_after(reason) else "False"
    at = {"generation": generation, "now": now}
    conditions = _set(conditions, "Requeued", requeue, reason, message, **at)
    conditions = _set(conditions, "QuotaReserved", "False", "Pending", message, **at)
    if any(c.get("type") == "Admitted" for c in conditions):
        conditions = _set(
            conditions,
            "Admitted",
            "False",
            "NoReservation",
            "The workload has no reservation",
            **at,
        )
    if any(c.get("type") == PODS_READY for c in conditions):
        waiting = _PODS_READY_MESSAGES[WAIT_FOR_START]
        conditions = _set(conditions, PODS_READY, "False", WAIT_FOR_START, waiting, **at)
    status["conditions"] = conditions
    return dict(body, status=status)


def finished(body: JSON, succeeded: bool, message: str, now: datetime) -> JSON:
    """``body`` marked Finished: Kueue returns its quota at once."""
    status = dict(body.get("status") or {})
    reason = "Succeeded" if succeeded else "Failed"
    status["conditions"] = _set(
        list(status.get("conditions") or []),
        "Finished",
        "True",
        reason,
        message,
        generation=body["metadata"].get("generation"),
        now=now,
    )
    return dict(body, status=status)


def workers_ready(pods: Iterable[PodView], workers: int, attempt: int) -> bool:
    """Every worker of ``attempt`` is running or has succeeded, and none is being deleted:
    what Kueue's batch/v1 Job counts as its pods being ready (the fetch Pod is not one of
    the Workload's pods)."""
    up = {
        p.index
        for p in pods
        if not p.stage
        and p.attempt == attempt
        and not p.deleting
        and p.phase in ("Running", "Succeeded")
    }
    return workers > 0 and len(up) >= workers


def pods_ready_condition(wl: WorkloadView, ready: bool) -> tuple[bool, str, str]:
    """(status, reason, message) of the PodsReady condition for ``wl`` when its workers are
    ``ready`` (``workers_ready``), decided as Kueue's job framework decides it
    (generatePodsReadyCondition): False/WaitForStart while not admitted (an evicted Workload
    included); True/Started once every worker runs, True/Recovered when that follows a
    recovery; after True, False/WaitForRecovery (Kueue then times the recovery timeout from
    that transition); otherwise False/WaitForStart (Kueue times the timeout from the
    admission)."""
    if not wl.admitted:
        reason = WAIT_FOR_START
    elif ready:
        recovering = wl.pods_ready_reason in (WAIT_FOR_RECOVERY, RECOVERED)
        reason = RECOVERED if recovering else STARTED
    elif wl.pods_ready or wl.pods_ready_reason == WAIT_FOR_RECOVERY:
        reason = WAIT_FOR_RECOVERY
    else:
        reason = WAIT_FOR_START
    return reason in (STARTED, RECOVERED), reason, _PODS_READY_MESSAGES[reason]


def pods_ready_changes(wl: WorkloadView, ready: bool) -> bool:
    """The Workload's PodsReady condition differs from ``pods_ready_condition`` in status or
    reason: the only case in which the framework writes it (so its transition time, which
    Kueue's timeouts count from, moves only on a real change)."""
    status, reason, _ = pods_ready_condition(wl, ready)
    return (wl.pods_ready, wl.pods_ready_reason) != (status, reason)


def pods_ready(body: JSON, ready: bool, now: datetime) -> JSON:
    """``body`` with its PodsReady condition as ``pods_ready_condition`` decides it, for the
    status subresource (``Cluster.replace_workload_status``)."""
    true, reason, message = pods_ready_condition(view(body), ready)
    status = dict(body.get("status") or {})
    status["conditions"] = _set(
        list(status.get("conditions") or []),
        PODS_READY,
        "True" if true else "False",
        reason,
        message,
        generation=body["metadata"].get("generation"),
        now=now,
    )
    return dict(body, status=status)


def admitted_placement(flavor: JSON | None) -> tuple[dict[str, str], list[JSON]]:
    """The node labels and tolerations an admitted ResourceFlavor adds to the workers."""
    if not flavor:
        return {}, []
    spec = flavor.get("spec") or {}
    labels = {str(k): str(v) for k, v in (spec.get("nodeLabels") or {}).items()}
    tolerations = list(spec.get("tolerations") or [])
    return labels, tolerations
