"""The reconciler's decisions, as a pure function: scenarios from a job's life."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetrain.api.job import TrainingJob
from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, ReportedModel
from kubetrain.api.status import ConditionStatus, Phase, TrainingJobStatus
from kubetrain.api.termination import Termination, encode_termination
from kubetrain.operator.reconcile.plan import CreationRefused, Lookups, Plan, invalid, plan
from kubetrain.operator.reconcile.refusals import Refusal
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView, observe_pod, with_report

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = Settings()


def job(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "modelType": "llm",
        "dataset": {"synthetic": {}},
        "llm": {"baseModel": "random://llama-tiny"},
        "resources": {"gpuType": "a100", "workers": 2, "gpusPerWorker": 4},
    }
    body.update(spec)
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": generation},
            "spec": body,
            "status": status or {},
        }
    )


def pod(index: int, attempt: int = 1, phase: str = "Running", **fields: Any) -> PodView:
    """A worker Pod as ``observe_pod`` gives it (its report decoded)."""
    report = fields.pop("report", None)
    seen = PodView(
        name=f"j-worker-{index}",
        uid=f"uid-{index}-{attempt}",
        index=index,
        attempt=attempt,
        phase=phase,
        deleting=fields.pop("deleting", False),
        **fields,
    )
    return with_report(seen, report)


def running(attempt: int = 1, **status: Any) -> dict[str, Any]:
    return {"phase": "Running", "attempt": attempt, "startTime": "2026-11-22T11:00:00Z", **status}


def decide(j: TrainingJob, pods: list[PodView], now: datetime = NOW) -> Plan:
    return plan(j, pods, now=now, settings=SETTINGS)


def reasons(p: Plan) -> list[str]:
    return [e.reason for e in p.events]


def test_a_new_job_starts_attempt_one_with_every_worker() -> None:
    p = decide(job(), [])
    assert p.status.attempt == 1 and p.create == [0, 1]
    assert p.status.phase is Phase.PENDING and reasons(p) == ["Created"]
    assert p.resume_from == "latest"
    assert p.status.resource_allocation is not None
    assert p.status.resource_allocation.summary == "a100:4x2"
    assert p.status.estimated_cost is not None and p.status.estimated_cost.hourly_usd == 24.0


def test_running_workers_make_the_job_running() -> None:
    p = decide(job({"phase": "Pending", "attempt": 1}), [pod(0), pod(1)])
    assert p.status.phase is Phase.RUNNING and p.status.start_time == NOW
    assert p.create == [] and p.delete == []


def test_a_pod_the_scheduler_cannot_place_queues_the_job() -> None:
    waiting = pod(1, phase="Pending", unschedulable="0/3 nodes: 3 Insufficient nvidia.com/gpu.")
    p = decide(job({"phase": "Pending", "attempt": 1}), [pod(0), waiting])
    assert p.status.phase is Phase.QUEUED
    queued = p.status.condition("Queued")
    assert queued is not None and "Insufficient nvidia.com/gpu" in queued.message


def test_all_workers_succeeding_completes_the_job() -> None:
    p = decide(job(running()), [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")])
    assert p.status.phase is Phase.COMPLETED and p.status.completion_time == NOW
    assert p.delete == [] and p.create == []


@pytest.mark.parametrize(
    ("pods", "phase"), [([pod(0), pod(1)], Phase.STOPPING), ([], Phase.STOPPED)]
)
def test_suspend_deletes_workers_then_stops(pods: list[PodView], phase: Phase) -> None:
    p = decide(job(running(latestCheckpoint="step-9"), suspend=True), pods)
    assert p.status.phase is phase
    assert p.delete == [x.name for x in pods]
    if phase is Phase.STOPPED:
        suspended = p.status.condition("Suspended")
        assert suspended is not None and "latest checkpoint step-9" in suspended.message


def test_resume_starts_a_new_attempt_from_the_named_checkpoint() -> None:
    stopped = running(phase="Stopped", checkpoints=[{"id": "a"}, {"id": "b"}], latestCheckpoint="b")
    p = decide(job(stopped, resumeFrom="a"), [])
    assert p.status.attempt == 2 and p.create == [0, 1] and p.resume_from == "a"
    assert "Resumed" in reasons(p)


def test_an_unknown_checkpoint_fails_until_the_spec_changes() -> None:
    stopped = running(phase="Stopped", checkpoints=[{"id": "a"}])
    p = decide(job(stopped, resumeFrom="zz"), [])
    assert p.status.phase is Phase.FAILED and p.create == []
    failed = p.status.condition("Failed")
    assert failed is not None and failed.reason == "CheckpointNotFound"
    assert "available: a" in failed.message
    assert p.status.completion_time is None  # a spec error: the job is not over

    written = p.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert decide(job(written, resumeFrom="zz"), []).create == []  # same generation: no retry
    fixed = decide(job(written, generation=2, resumeFrom="a"), [])
    assert fixed.create == [0, 1] and fixed.resume_from == "a"


def test_a_failing_trainer_counts_against_the_backoff_limit() -> None:
    broken = pod(0, phase="Failed", exit_code=1, message="CUDA error: out of memory")
    p = decide(job(running(), runPolicy={"backoffLimit": 1}), [broken, pod(1)])
    assert p.status.failures == 1 and p.status.attempt == 2
    assert sorted(p.delete) == ["j-worker-0", "j-worker-1"]  # the whole group restarts
    assert "TrainerFailed" in reasons(p)

    again = decide(
        job(running(attempt=2, failures=1), runPolicy={"backoffLimit": 1}),
        [
            pod(0, attempt=2, phase="Failed", exit_code=1, message="CUDA error: out of memory"),
        ],
    )
    assert again.status.phase is Phase.FAILED
    failed = again.status.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert "exited with code 1: CUDA error: out of memory" in failed.message


@pytest.mark.parametrize(
    ("message", "reason", "detail"),
    [
        ("ConfigurationError: spec.vision.architecture 'yolov8' is not supported",
         "ConfigurationError", "spec.vision.architecture 'yolov8' is not supported"),
        ("DatasetNotFound: s3://data/train.jsonl does not exist",
         "DatasetNotFound", "s3://data/train.jsonl does not exist"),
        ("too few images", "ConfigurationError", "too few images"),
    ],
)  # fmt: skip
def test_a_permanent_failure_fails_the_job_at_once(message: str, reason: str, detail: str) -> None:
    broken = pod(0, phase="Failed", exit_code=EXIT_PERMANENT, message=message)
    p = decide(job(running(), runPolicy={"backoffLimit": 3}), [broken, pod(1)])
    assert p.status.phase is Phase.FAILED and p.status.failures == 0 and p.status.attempt == 1
    failed = p.status.condition("Failed")
    assert failed is not None and failed.reason == reason
    assert failed.message == f"worker 0 (j-worker-0): {detail}"
    assert "j-worker-1" in p.delete  # the rest of the group stops


@pytest.mark.parametrize(
    "lost",
    [
        pod(0, phase="Failed", reason="Evicted"),
        pod(0, phase="Failed", exit_code=EXIT_STOPPED),
        pod(0, phase="Failed", disruption="PreemptionByScheduler"),
        pod(0, deleting=True),
    ],
)
def test_a_lost_worker_restarts_the_group_without_counting_a_failure(lost: PodView) -> None:
    p = decide(job(running(), runPolicy={"backoffLimit": 0}), [lost, pod(1)])
    assert (p.status.restarts, p.status.failures, p.status.attempt) == (1, 0, 2)
    assert "WorkerLost" in reasons(p)
    assert p.status.phase is Phase.PENDING


def test_new_workers_wait_until_the_previous_attempt_is_gone() -> None:
    p = decide(job(running(attempt=2, phase="Pending")), [pod(0, attempt=1, deleting=True)])
    assert p.create == []
    gone = decide(job(running(attempt=2, phase="Pending")), [])
    assert gone.create == [0, 1]


@pytest.mark.parametrize(
    "stuck",
    [
        pod(0, attempt=1, deleting=True, node_lost=True, disruption="DeletionByTaintManager"),
        pod(0, attempt=1, deleting=True, deletion_time=NOW - timedelta(seconds=121)),
    ],
)
def test_a_new_attempt_does_not_wait_for_workers_stuck_on_a_lost_node(stuck: PodView) -> None:
    p = decide(job(running(attempt=2, phase="Pending")), [stuck, pod(1, attempt=1, deleting=True)])
    assert p.create == []  # worker 1 is still stopping (checkpointing): that one is waited for
    p = decide(job(running(attempt=2, phase="Pending")), [stuck])
    assert p.create == [0, 1]
    on_time = pod(0, attempt=1, deleting=True, deletion_time=NOW - timedelta(seconds=60))
    assert decide(job(running(attempt=2, phase="Pending")), [on_time]).create == []


def test_a_worker_evicted_from_a_lost_node_is_a_restart_not_a_failure() -> None:
    evicted = pod(0, deleting=True, node_lost=True, disruption="DeletionByTaintManager")
    p = decide(job(running(), runPolicy={"backoffLimit": 0}), [evicted, pod(1)])
    assert (p.status.restarts, p.status.failures, p.status.attempt) == (1, 0, 2)
    assert p.delete == ["j-worker-1"]  # the healthy worker checkpoints; the lost one is gone


def test_a_change_of_workers_restarts_the_group_at_its_new_size() -> None:
    one = [pod(0, workers=1)]
    p = decide(job(running(), resources={"gpuType": "a100", "workers": 2, "gpusPerWorker": 4}), one)
    assert p.status.attempt == 2 and p.delete == ["j-worker-0"] and p.create == []
    assert (p.status.restarts, p.status.failures) == (0, 0)
    assert "Resized" in reasons(p) and p.status.phase is Phase.PENDING
    same = decide(job(running()), [pod(0, workers=2), pod(1, workers=2)])
    assert same.status.attempt == 1 and same.delete == []


def test_an_unknown_gpu_type_fails_listing_the_catalogue() -> None:
    p = decide(job(resources={"gpuType": "tpu"}), [])
    failed = p.status.condition("Failed")
    assert p.status.phase is Phase.FAILED and failed is not None
    assert failed.reason == "UnknownGPUType" and "a100, a10g, cpu, h100" in failed.message


def test_gpu_hours_and_cost_accrue_while_workers_run() -> None:
    since = {
        "resourceUsage": {"gpuHours": 1.0, "costUSD": 3.0, "lastUpdateTime": "2026-11-22T11:30:00Z"}
    }
    p = decide(job(running(**since)), [pod(0), pod(1)])
    usage = p.status.resource_usage
    assert usage is not None
    assert usage.gpu_hours == pytest.approx(1.0 + 2 * 4 * 0.5)  # 2 workers x 4 GPUs x 30 min
    assert usage.cost_usd == pytest.approx(3.0 + 3.0 * 8 * 0.5)
    assert usage.last_update_time == NOW


def test_the_cost_ceiling_stops_the_job() -> None:
    spent = {"resourceUsage": {"gpuHours": 40.0, "costUSD": 120.0}}
    p = decide(job(running(**spent), runPolicy={"maxCostUSD": 100}), [pod(0), pod(1)])
    assert p.status.phase is Phase.STOPPING and sorted(p.delete) == ["j-worker-0", "j-worker-1"]
    stopped = decide(job(running(phase="Stopping", **spent), runPolicy={"maxCostUSD": 100}), [])
    suspended = stopped.status.condition("Suspended")
    assert stopped.status.phase is Phase.STOPPED and suspended is not None
    assert suspended.reason == "CostLimitReached" and "maxCostUSD 100.00" in suspended.message


def test_the_active_deadline_fails_the_job_once_it_trained_that_long() -> None:
    trained = {
        "progress": {"elapsedSeconds": 590.0},
        "resourceUsage": {"lastUpdateTime": "2026-11-22T11:59:50Z"},
    }
    started = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    workers = [pod(0, started_at=started), pod(1, started_at=started)]
    deadline = {"runPolicy": {"activeDeadlineSeconds": 600}}
    almost = decide(job(running(**trained), **deadline), workers, now=NOW - timedelta(seconds=5))
    assert almost.status.phase is Phase.RUNNING  # 595 s trained: one hour of wall time is not it
    p = decide(job(running(**trained), **deadline), workers)
    failed = p.status.condition("Failed")
    assert p.status.phase is Phase.FAILED and failed is not None
    assert failed.reason == "DeadlineExceeded" and "trained 600s" in failed.message
    assert "activeDeadlineSeconds (600s)" in failed.message
    assert sorted(p.delete) == ["j-worker-0", "j-worker-1"]


def test_time_stopped_never_counts_against_the_active_deadline() -> None:
    # Started two hours ago, trained 100 s, then stopped: past the deadline in wall time only.
    stopped = running(phase="Stopped", progress={"elapsedSeconds": 100.0})
    deadline = {"runPolicy": {"activeDeadlineSeconds": 600}}
    still = decide(job(stopped, suspend=True, **deadline), [])
    assert still.status.phase is Phase.STOPPED
    resumed = decide(job(stopped, **deadline), [])
    assert resumed.status.phase is Phase.PENDING and resumed.create == [0, 1]


def test_usage_is_exact_from_the_pods_run_times_however_often_status_is_written() -> None:
    """A cpu worker ($0.10/h) run for 16 s costs $0.000444, with every pass written or few."""
    cpu = {"resources": {"gpuType": "cpu", "workers": 1}}
    started = NOW - timedelta(seconds=16)
    passes = [started + timedelta(seconds=s) for s in (0.5, 1, 1.7, 3, 7.2, 9, 12.1, 15.9)]
    for written_every in (1, 3, 100):
        status: dict[str, Any] = {"phase": "Running", "attempt": 1}
        for n, now in enumerate(passes):
            p = decide(job(status, **cpu), [pod(0, started_at=started)], now=now)
            if n % written_every == 0:
                status = p.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        finished = pod(0, phase="Succeeded", started_at=started, finished_at=NOW)
        done = decide(job(status, **cpu), [finished], now=NOW + timedelta(seconds=30))
        usage = done.status.resource_usage
        assert usage is not None and done.status.progress is not None
        assert usage.cost_usd == pytest.approx(0.10 * 16 / 3600, rel=1e-6), written_every
        assert done.status.progress.elapsed_seconds == pytest.approx(16.0)


def test_workers_running_side_by_side_count_their_time_once_for_training_time() -> None:
    start0, start1 = NOW - timedelta(seconds=100), NOW - timedelta(seconds=40)
    p = decide(
        job({"phase": "Running", "attempt": 1}),
        [pod(0, started_at=start0), pod(1, started_at=start1)],
    )
    usage, progress = p.status.resource_usage, p.status.progress
    assert usage is not None and progress is not None
    assert progress.elapsed_seconds == pytest.approx(100.0)
    assert usage.gpu_hours == pytest.approx(4 * 140 / 3600)  # 4 GPUs x (100 s + 40 s)


def test_an_idle_job_keeps_its_usage_clock_still_and_counts_the_next_run_from_its_start() -> None:
    usage = {"gpuHours": 1.0, "costUSD": 2.0, "lastUpdateTime": "2026-11-22T10:00:00Z"}
    idle = {"phase": "Stopped", "attempt": 1, "resourceUsage": usage}
    still = decide(job(idle, suspend=True), [])
    assert still.status.resource_usage is not None
    assert still.status.resource_usage.last_update_time == datetime(2026, 11, 22, 10, tzinfo=UTC)
    again = {**idle, "phase": "Pending", "attempt": 2}
    p = decide(job(again), [pod(0, 2, started_at=NOW - timedelta(seconds=90))])
    assert p.status.resource_usage is not None
    assert p.status.resource_usage.gpu_hours == pytest.approx(1.0 + 4 * 90 / 3600)


def test_a_finished_job_is_deleted_after_its_ttl() -> None:
    done = {"phase": "Completed", "attempt": 1, "completionTime": "2026-11-22T11:59:00Z"}
    early = decide(job(done, runPolicy={"ttlSecondsAfterFinished": 120}), [])
    assert not early.delete_job and early.requeue_after == 60
    late = decide(
        job(done, runPolicy={"ttlSecondsAfterFinished": 120}), [], now=NOW + timedelta(minutes=2)
    )
    assert late.delete_job


def test_reports_are_mirrored_and_bad_ones_set_aside() -> None:
    report = {
        "version": 1,
        "time": "2026-11-22T11:59:58Z",
        "epoch": 1,
        "totalEpochs": 2,
        "step": 30,
        "totalSteps": 120,
        "loss": 0.75,
        "checkpoints": [
            {
                "id": "s30",
                "epoch": 1,
                "step": 30,
                "createdAt": "2026-11-22T11:59:00Z",
                "path": "/checkpoints/s30",
            }
        ],
    }
    status = running(progress={"elapsedSeconds": 600}, metrics={"bestLoss": 0.5})
    p = decide(job(status), [pod(0, report=json.dumps(report)), pod(1)])
    assert p.status.progress is not None and p.status.metrics is not None
    assert (p.status.progress.current_step, p.status.progress.percentage) == (30, 25.0)
    assert p.status.progress.remaining_seconds == 1800.0  # 600 s for 30 steps, 90 to go
    assert p.status.metrics.best_loss == 0.5 and p.status.metrics.current_loss == 0.75
    assert p.status.latest_checkpoint == "s30"

    bad = decide(
        job(status),
        [pod(0, report='{"version": 1, "time": "2026-01-01T00:00:00Z", "step": -3}'), pod(1)],
    )
    assert [problem for _, problem in bad.bad_reports] == [
        "invalid report field step: Input should be greater than or equal to 0"
    ]
    assert bad.status.progress is not None and bad.status.progress.current_step is None


# -- errors that end ---------------------------------------------------------------------


def test_a_refusal_the_reconciler_met_fails_the_job_with_the_api_servers_words() -> None:
    said = 'could not create Pod j-worker-0-a1: Pod "x" is invalid'
    refused = Refusal("FailedCreatePod", said, 1)
    p = plan(job({"phase": "Pending", "attempt": 1}), [], now=NOW, settings=SETTINGS,
             lookups=Lookups(refusal=refused))  # fmt: skip
    assert p.status.phase is Phase.FAILED and p.create == []
    failed = p.status.condition("Failed")
    assert failed is not None and failed.reason == "FailedCreatePod"
    assert failed.message == refused.message
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "FailedCreatePod")]
    # A new generation (a corrected spec.image, say) tries again.
    again = decide(job(_dump(p), generation=2), [])
    assert again.status.phase is Phase.PENDING and again.create == [0, 1]


def _dump(p: Plan) -> dict[str, Any]:
    return json.loads(p.status.model_dump_json(by_alias=True, exclude_none=True))


PULL = ("ImagePullBackOff", 'container trainer: Back-off pulling image "registry.example/t:1"')


def test_a_container_that_cannot_start_says_so_at_once_and_fails_after_the_grace() -> None:
    pending = job({"phase": "Pending", "attempt": 1})
    stuck = [pod(0, phase="Pending", waiting=PULL), pod(1, phase="Pending")]
    first = decide(pending, stuck)
    waiting = first.status.condition("ContainersWaiting")
    assert waiting is not None and waiting.status == "True"
    assert waiting.reason == "ImagePullBackOff"
    assert waiting.message == f"worker 0 (j-worker-0): ImagePullBackOff: {PULL[1]}"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ImagePullBackOff")]
    grace = SETTINGS.container_waiting_grace_seconds
    assert first.requeue_after == grace and first.status.phase is Phase.PENDING

    later = decide(job(_dump(first)), stuck, now=NOW + timedelta(seconds=grace - 1))
    assert later.status.phase is Phase.PENDING and later.events == []  # no Event per pass
    failed = decide(job(_dump(first)), stuck, now=NOW + timedelta(seconds=grace))
    assert failed.status.phase is Phase.FAILED
    condition = failed.status.condition("Failed")
    assert condition is not None and condition.reason == "ImagePullBackOff"
    assert PULL[1] in condition.message and "containerWaitingGraceSeconds" in condition.message
    assert sorted(failed.delete) == ["j-worker-0", "j-worker-1"]


def test_an_image_name_no_wait_can_cure_fails_at_once() -> None:
    bad = ("InvalidImageName", 'container trainer: invalid reference format: "Bad:Name"')
    p = decide(job({"phase": "Pending", "attempt": 1}), [pod(0, phase="Pending", waiting=bad)])
    assert p.status.phase is Phase.FAILED
    assert p.status.condition("Failed").reason == "InvalidImageName"  # type: ignore[union-attr]


def test_containers_that_start_after_all_clear_the_condition() -> None:
    first = decide(job({"phase": "Pending", "attempt": 1}), [pod(0, phase="Pending", waiting=PULL)])
    started = decide(job(_dump(first)), [pod(0), pod(1)])
    cleared = started.status.condition("ContainersWaiting")
    assert cleared is not None and cleared.status == "False"
    assert started.status.phase is Phase.RUNNING


def test_lost_workers_restart_at_most_max_restarts_times() -> None:
    evicted = pod(0, phase="Failed", reason="Evicted", message="The node was low on memory.")
    within = decide(job(running(restarts=2), runPolicy={"maxRestarts": 3}), [evicted, pod(1)])
    assert within.status.restarts == 3 and within.status.attempt == 2
    beyond = decide(job(running(restarts=3), runPolicy={"maxRestarts": 3}), [evicted, pod(1)])
    assert beyond.status.phase is Phase.FAILED
    failed = beyond.status.condition("Failed")
    assert failed is not None and failed.reason == "RestartLimitExceeded"
    assert "spec.runPolicy.maxRestarts (3)" in failed.message


def test_a_worker_evicted_for_filling_its_own_tmp_is_a_failure_not_a_disruption() -> None:
    full = pod(0, phase="Failed", reason="Evicted",
               message='Usage of EmptyDir volume "tmp" exceeds the limit "50Gi". ')  # fmt: skip
    p = decide(job(running()), [full, pod(1)])
    assert (p.status.failures, p.status.restarts) == (1, 0)
    assert "was evicted: Usage of EmptyDir volume" in p.events[0].message


def test_the_kubelets_waiting_reason_is_read_from_init_and_worker_containers() -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}
    body: dict[str, Any] = {
        "metadata": {"name": "p", "uid": "u"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [{"name": "init", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": "trainer", "state": {"waiting": waiting}}],
        },
    }
    view = observe_pod(body)
    assert view.waiting == (waiting["reason"], 'container trainer: secret "hf" not found')
    body["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] = "ContainerCreating"
    assert observe_pod(body).waiting is None  # routine: the kubelet is getting there


def test_a_refusal_of_an_older_spec_does_not_fail_a_newer_one() -> None:
    refused = Refusal("FailedCreatePod", "could not create Pod j-worker-0-a1: refused", 1)
    p = plan(job({"phase": "Pending", "attempt": 1}, generation=2), [], now=NOW,
             settings=SETTINGS, lookups=Lookups(refusal=refused))  # fmt: skip
    assert p.status.phase is Phase.PENDING and p.create == [0, 1]


def test_a_run_that_completed_but_could_not_say_so_is_completed_not_failed() -> None:
    said = encode_termination(
        Termination(step=232, total_steps=232, model=ReportedModel(
            path="/checkpoints/output/adapter", format="peft-adapter", digest="sha256:" + "a" * 64))
    )  # fmt: skip
    one = job(running(), resources={"gpuType": "a100", "workers": 1, "gpusPerWorker": 1})
    aborted = pod(0, phase="Failed", exit_code=134, message=said)
    p = decide(one, [aborted])
    assert p.status.phase is Phase.COMPLETED and p.status.failures == 0
    assert p.status.model is not None and p.status.model.path == "/checkpoints/output/adapter"
    assert p.status.model.digest == "sha256:" + "a" * 64
    assert "CompletedWithoutReport" in reasons(p)

    # Anything else in the message is a failure, as before: a trainer's text is not a claim.
    for message in ("Traceback ...", said.replace("completed", "finished"), "{}"):
        failed = decide(one, [pod(0, phase="Failed", exit_code=134, message=message)])
        assert failed.status.failures == 1 and failed.status.phase is Phase.PENDING


def _report(step: int, checkpoints: list[str]) -> str:
    return json.dumps({
        "version": 1, "time": "2026-11-22T11:59:58Z", "epoch": 1, "totalEpochs": 2,
        "step": step, "totalSteps": 120,
        "checkpoints": [{"id": c, "epoch": 1, "step": int(c[1:]),
                         "createdAt": "2026-11-22T11:59:00Z", "path": f"/checkpoints/{c}"}
                        for c in checkpoints],
    })  # fmt: skip


def test_a_report_older_than_status_never_takes_it_back() -> None:
    # Status mirrors attempt 2 at step 50 (pushed reports); after an operator restart only
    # the Pod's annotation is left, holding step 30 of the same attempt.
    shown = decide(job(running(attempt=2)), [pod(0, 2, report=_report(50, ["s40", "s50"])),
                                             pod(1, 2)])  # fmt: skip
    assert shown.status.progress is not None and shown.status.progress.attempt == 2
    again = decide(job(_dump(shown)), [pod(0, 2, report=_report(30, ["s30"])), pod(1, 2)])
    assert again.status.progress is not None and again.status.progress.current_step == 50
    assert [c.id for c in again.status.checkpoints] == ["s40", "s50"]
    assert again.status.latest_checkpoint == "s50"
    # A report of an earlier attempt (its Pod still stopping) neither.
    stopping = pod(0, 1, phase="Running", deleting=True, report=_report(90, ["s90"]))
    old = decide(job(_dump(shown)), [stopping, pod(0, 2), pod(1, 2)])
    assert old.status.progress is not None and old.status.progress.current_step == 50
    # A later attempt starts again from its checkpoint: its lower step is news, not old.
    resumed = decide(job(_dump(shown) | {"attempt": 3}),
                     [pod(0, 3, report=_report(41, ["s40"])), pod(1, 3)])  # fmt: skip
    assert resumed.status.progress is not None
    assert (resumed.status.progress.current_step, resumed.status.progress.attempt) == (41, 3)


def test_a_refused_creation_is_told_in_a_condition_and_held_until_its_retry() -> None:
    refused = CreationRefused("could not create Pod j-worker-0: quota", NOW + timedelta(seconds=5))
    first = plan(job(), [], now=NOW, settings=SETTINGS, lookups=Lookups(creation_refused=refused))
    held = first.status.condition("PodCreationFailed")
    assert held is not None and held.status is ConditionStatus.TRUE
    assert held.message == refused.message and "FailedCreatePod" in reasons(first)
    assert first.create == [] and first.requeue_after == 5.0
    # At the retry, the Pods are created again; the unchanged condition posts no Event.
    again = job(first.status.model_dump(mode="json", by_alias=True, exclude_none=True))
    due = NOW + timedelta(seconds=5)
    retry = plan(again, [], now=due, settings=SETTINGS, lookups=Lookups(creation_refused=refused))
    assert retry.create == [0, 1] and "FailedCreatePod" not in reasons(retry)
    # Once the reconciler created them, the condition says so.
    done = job(retry.status.model_dump(mode="json", by_alias=True, exclude_none=True))
    created = decide(done, [pod(0), pod(1)], now=due)
    cleared = created.status.condition("PodCreationFailed")
    assert cleared is not None and cleared.status is ConditionStatus.FALSE


def test_a_body_the_models_reject_fails_once_per_generation() -> None:
    first = invalid(TrainingJobStatus(), 3, "spec.training.learningRate: too big", NOW)
    assert first.status.phase is Phase.FAILED and reasons(first) == ["InvalidSpec"]
    again = invalid(first.status, 3, "spec.training.learningRate: too big", NOW)
    assert again.events == [] and again.status == first.status
    assert reasons(invalid(first.status, 4, "spec.x: bad", NOW)) == ["InvalidSpec"]


def test_a_job_failed_for_refused_creations_keeps_saying_why() -> None:
    refused = CreationRefused("could not create Pod j-worker-0: quota", NOW + timedelta(seconds=5))
    first = plan(job(), [], now=NOW, settings=SETTINGS, lookups=Lookups(creation_refused=refused))
    stored = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    limit = Refusal("FailedCreatePod", f"{refused.message} (refused 10 times in a row)", 1)
    failed = plan(job(stored), [], now=NOW, settings=SETTINGS, lookups=Lookups(refusal=limit))
    assert failed.status.phase is Phase.FAILED
    held = failed.status.condition("PodCreationFailed")
    assert held is not None and held.status is ConditionStatus.TRUE
