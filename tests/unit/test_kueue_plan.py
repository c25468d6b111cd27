"""Admission through Kueue, as the plan decides it: all or nothing, eviction that
checkpoints before the quota goes back, release on stop and finish."""

from __future__ import annotations

from typing import Any

from kubetrain.api.report import EXIT_STOPPED
from kubetrain.api.status import Phase
from kubetrain.operator import kueue
from kubetrain.operator.placement import Placement
from kubetrain.operator.reconcile.plan import Lookups, Plan, WorkloadAction, plan
from kubetrain.operator.render import worker_pod
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView
from tests.unit.test_plan import NOW, job, pod, reasons, running

SETTINGS = Settings(kueue_enabled=True)
DIGEST = "d1"


def workload(**status: Any) -> kueue.WorkloadView:
    fields: dict[str, Any] = {"name": "trainingjob-j", "uid": "w", "digest": DIGEST}
    return kueue.WorkloadView(**(fields | status))


ADMITTED = workload(quota_reserved=True, admitted=True, cluster_queue="gpus",
                    flavors={"nvidia.com/gpu": "a100"})  # fmt: skip


def decide(j: Any, pods: list[PodView], wl: kueue.WorkloadView | None = None, **more: Any) -> Plan:
    desired = {"metadata": {"annotations": {kueue.ANNOTATION_SHAPE: DIGEST}}}
    lookups = Lookups(queue="team-a", workload=wl, desired_workload=desired, **more)
    return plan(j, pods, now=NOW, settings=SETTINGS, lookups=lookups)


def test_a_queued_job_makes_its_workload_and_no_worker() -> None:
    p = decide(job(), [])
    assert p.workload is not None and p.workload.kind == "create"
    assert p.create == [] and p.status.phase is Phase.QUEUED and p.status.attempt == 1
    assert reasons(p) == ["Created"]  # one Event for the new job, as without Kueue
    assert p.status.queue is not None and p.status.queue.workload == "trainingjob-j"


def test_while_kueue_has_not_admitted_it_the_job_waits_with_kueues_reason() -> None:
    said = "insufficient unused quota for nvidia.com/gpu in flavor a100, 4 more needed"
    wl = workload(pending_reason="Pending", pending_message=said)
    p = decide(job({"phase": "Queued", "attempt": 1}), [], wl, cluster_queue="gpus", position=2)
    assert p.create == [] and p.workload is None
    queued = p.status.condition("Queued")
    assert queued is not None and said in queued.message and "ClusterQueue gpus" in queued.message
    assert p.status.queue is not None
    assert (p.status.queue.position, p.status.queue.message) == (2, said)
    assert reasons(p) == []  # a new word from Kueue changes the condition, not an Event


def test_admission_creates_every_worker_at_once() -> None:
    p = decide(job({"phase": "Queued", "attempt": 1}), [], ADMITTED)
    assert p.create == [0, 1] and p.status.phase is Phase.PENDING
    assert reasons(p) == ["Admitted"]
    assert p.status.queue is not None and p.status.queue.admitted
    assert p.status.queue.flavors == {"nvidia.com/gpu": "a100"}


def test_eviction_stops_the_workers_and_keeps_the_quota_until_they_have_stopped() -> None:
    wl = workload(quota_reserved=True, admitted=True, evicted_reason="Preempted",
                  evicted_message="Preempted to accommodate a workload",
                  preemptor="ns/high")  # fmt: skip
    p = decide(job(running()), [pod(0), pod(1)], wl)
    assert sorted(p.delete) == ["j-worker-0", "j-worker-1"] and p.workload is None
    assert p.status.phase is Phase.STOPPING and reasons(p) == ["Preempted"]
    assert "for TrainingJob ns/high" in p.events[0].message
    # Still checkpointing: the quota stays reserved.
    stopping = decide(job(dict(running(), phase="Stopping")), [pod(0, deleting=True)], wl)
    assert stopping.workload is None and stopping.status.restarts == 0


def test_once_the_workers_have_checkpointed_the_quota_goes_back_and_the_job_requeues() -> None:
    wl = workload(quota_reserved=True, admitted=True, evicted_reason="Preempted",
                  evicted_message="Preempted to accommodate a workload")  # fmt: skip
    # A stopped trainer exits with EXIT_STOPPED once its checkpoint is written.
    done = [pod(i, phase="Failed", exit_code=EXIT_STOPPED, deleting=True) for i in (0, 1)]
    status = dict(running(), phase="Stopping", latestCheckpoint="step-40")
    p = decide(job(status), done, wl)
    assert p.workload == WorkloadAction("release", "Preempted", wl.evicted_message)
    assert p.status.phase is Phase.QUEUED and p.status.restarts == 1 and p.status.failures == 0
    assert p.status.attempt == 2 and p.status.resumed_from == "latest"
    assert p.status.queue is not None and p.status.queue.preemptions == 1
    assert "resumes from checkpoint step-40" in p.events[0].message
    # Back in the queue: no worker of the new attempt until Kueue admits it again.
    waiting = workload(pending_reason="Pending", pending_message="waiting")
    again = decide(job(p.status.model_dump(by_alias=True, mode="json")), [], waiting)
    assert again.create == [] and again.status.phase is Phase.QUEUED
    held = again.status.condition("Queued")  # still says why it waits again
    assert held is not None and held.reason == "Preempted" and "step-40" in held.message
    readmitted = decide(job(again.status.model_dump(by_alias=True, mode="json")), [], ADMITTED)
    assert readmitted.create == [0, 1] and readmitted.resume_from == "latest"


def test_a_release_retried_after_a_conflict_counts_the_preemption_once() -> None:
    wl = workload(quota_reserved=True, admitted=True, evicted_reason="Preempted",
                  evicted_message="Preempted to accommodate a workload")  # fmt: skip
    done = [pod(i, phase="Failed", exit_code=EXIT_STOPPED, deleting=True) for i in (0, 1)]
    first = decide(job(dict(running(), phase="Stopping")), done, wl)
    again = decide(job(first.status.model_dump(by_alias=True, mode="json")), done, wl)
    assert again.workload == first.workload and again.workload is not None
    assert again.status.queue is not None and again.status.queue.preemptions == 1
    assert (again.status.restarts, again.status.attempt) == (1, 2)


def test_suspending_deletes_the_workload_once_the_workers_stopped() -> None:
    suspended = job(running(), suspend=True)
    first = decide(suspended, [pod(0), pod(1)], ADMITTED)
    assert first.status.phase is Phase.STOPPING and first.workload is None
    done = decide(job(dict(running(), phase="Stopping"), suspend=True), [], ADMITTED)
    assert done.status.phase is Phase.STOPPED
    assert done.workload is not None and done.workload.kind == "delete"


def test_a_queued_job_suspended_lets_go_of_its_place_at_once() -> None:
    waiting = workload(pending_reason="Pending", pending_message="waiting")
    p = decide(job({"phase": "Queued", "attempt": 1}, suspend=True), [], waiting)
    assert p.status.phase is Phase.STOPPED
    assert p.workload is not None and p.workload.kind == "delete"


def test_completion_and_failure_mark_the_workload_finished() -> None:
    done = [pod(i, phase="Succeeded") for i in (0, 1)]
    p = decide(job(running()), done, ADMITTED)
    assert p.status.phase is Phase.COMPLETED
    assert p.workload is not None and (p.workload.kind, p.workload.reason) == (
        "finish",
        "Succeeded",
    )
    failed = pod(0, phase="Failed", exit_code=78, message="DatasetNotFound: no such object")
    q = decide(job(running()), [failed, pod(1)], ADMITTED)
    assert q.status.phase is Phase.FAILED
    assert q.workload is not None and (q.workload.kind, q.workload.reason) == ("finish", "Failed")
    again = decide(job(q.status.model_dump(by_alias=True, mode="json")), [],
                   workload(quota_reserved=True, admitted=True, finished=True))  # fmt: skip
    assert again.workload is None


def test_a_job_whose_shape_changed_gets_a_new_workload() -> None:
    stale = workload(quota_reserved=True, admitted=True, digest="old")
    p = decide(job({"phase": "Pending", "attempt": 2}), [], stale)
    assert p.workload is not None and p.workload.kind == "delete" and p.create == []


def test_a_worker_failure_restarts_without_giving_up_the_quota() -> None:
    failed = pod(1, phase="Failed", exit_code=1)
    p = decide(job(running()), [pod(0), failed], ADMITTED)
    assert p.workload is None and p.status.failures == 1
    nxt = decide(job(p.status.model_dump(by_alias=True, mode="json")), [], ADMITTED)
    assert nxt.create == [0, 1] and nxt.workload is None


def test_the_queue_label_without_the_integration_holds_the_job_with_a_clear_reason() -> None:
    p = plan(job(), [], now=NOW, settings=Settings(), lookups=Lookups(kueue_off=True))
    assert p.create == [] and p.status.phase is Phase.QUEUED
    queued = p.status.condition("Queued")
    assert queued is not None and queued.reason == "KueueDisabled"
    assert "kueue.enabled" in queued.message


def test_the_workload_holds_every_worker_with_their_requests_and_placement() -> None:
    j = job()
    entry = SETTINGS.catalogue.get("a100")
    assert entry is not None
    placement = Placement.resolve(j.spec, "a100", entry)
    worker = worker_pod(j, 0, attempt=1, resume_from="latest", placement=placement,
                        settings=SETTINGS)  # fmt: skip
    body = kueue.workload(j, worker, "team-a", ("kubetrain-normal", 100))
    (pods,) = body["spec"]["podSets"]
    assert pods["count"] == 2 and pods["name"] == "workers"
    container = pods["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert pods["template"]["spec"]["affinity"] == worker["spec"]["affinity"]
    assert body["spec"]["priority"] == 100 and body["spec"]["queueName"] == "team-a"
    owner = body["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingJob", "u", True)
    assert body["metadata"]["labels"][kueue.JOB_UID_LABEL] == "u"


def test_a_workload_view_reads_kueues_conditions_and_the_preemptor() -> None:
    body = {
        "metadata": {"name": "trainingjob-j", "uid": "w",
                     "annotations": {kueue.ANNOTATION_SHAPE: "d"}},
        "status": {
            "admission": {"clusterQueue": "gpus", "podSetAssignments": [
                {"name": "workers", "flavors": {"nvidia.com/gpu": "a100", "cpu": "default"}}]},
            "conditions": [
                {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
                {"type": "Admitted", "status": "True", "reason": "Admitted"},
                {"type": "Evicted", "status": "True", "reason": "Preempted",
                 "message": "Preempted to accommodate a higher priority Workload"},
                {"type": "Preempted", "status": "True", "reason": "InClusterQueue",
                 "message": "Preempted to accommodate a workload (UID: a-1, JobUID: b-2) due "
                            "to prioritization in the ClusterQueue"},
            ],
        },
    }  # fmt: skip
    wl = kueue.view(body)
    assert wl.admitted and wl.quota_reserved and wl.cluster_queue == "gpus"
    assert wl.flavors == {"nvidia.com/gpu": "a100", "cpu": "default"}
    assert wl.evicted_reason == "Preempted" and wl.preemptor_uid == "b-2"
    released = kueue.view(kueue.released(body, "Preempted", "preempted", NOW))
    assert not released.quota_reserved and not released.admitted and not released.flavors
    requeued = next(c for c in kueue.released(body, "Preempted", "m", NOW)["status"]["conditions"]
                    if c["type"] == "Requeued")  # fmt: skip
    assert requeued["status"] == "True"
    assert kueue.view(kueue.finished(body, True, "done", NOW)).finished


def test_pods_ready_follows_the_workers_as_kueues_job_framework_keeps_it() -> None:
    # Admitted, the workers not yet running: no write (Kueue times the start from admission).
    starting = decide(job(running()), [pod(0, phase="Pending"), pod(1, phase="Pending")], ADMITTED)
    assert starting.workload is None
    # Every worker runs: PodsReady becomes True.
    up = decide(job(running()), [pod(0), pod(1)], ADMITTED)
    assert up.workload == WorkloadAction("ready", ready=True)
    ready = workload(quota_reserved=True, admitted=True, cluster_queue="gpus",
                     pods_ready=True, pods_ready_reason=kueue.STARTED)  # fmt: skip
    assert decide(job(running()), [pod(0), pod(1)], ready).workload is None  # said already
    # A worker of the next attempt is not running yet: False, waiting for recovery.
    recovering = decide(job(running(attempt=2)), [pod(0, 2), pod(1, 2, phase="Pending")], ready)
    assert recovering.workload == WorkloadAction("ready", ready=False)
