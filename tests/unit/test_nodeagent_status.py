"""Pod status from runtime observations: phases, container states, conditions."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain.localcluster.nodeagent.pods import restart_delay
from kubetrain.localcluster.nodeagent.runtime import Attempt
from kubetrain.localcluster.nodeagent.status import (
    ContainerView,
    Run,
    conditions,
    container_status,
    pod_phase,
    pod_status,
)

T0 = 1_800_000_000.0


def run(state: str = "running", code: int | None = None, **extra: Any) -> Run:
    attempt = Attempt(
        state,  # type: ignore[arg-type]
        started_at=T0,
        finished_at=None if state == "running" else T0 + 5,
        exit_code=code,
        **extra,
    )
    return Run(attempt, "kubetrain://abc", extra.pop("message", None))


def view(name: str = "main", **kwargs: Any) -> ContainerView:
    return ContainerView(name, "img:1", **kwargs)


RUNNING = view(current=run())
SUCCEEDED = view(current=run("exited", 0))
FAILED = view(current=run("exited", 1))
CREATING = view()
BACKING_OFF = view(current=run("exited", 1), waiting=("CrashLoopBackOff", "back-off 10s"))


@pytest.mark.parametrize(
    ("init", "main", "policy", "phase"),
    [
        ([], [CREATING], "Always", "Pending"),
        ([], [RUNNING], "Never", "Running"),
        ([], [SUCCEEDED], "Never", "Succeeded"),
        ([], [SUCCEEDED, FAILED], "Never", "Failed"),
        ([], [SUCCEEDED, RUNNING], "Never", "Running"),
        ([], [BACKING_OFF], "Always", "Running"),
        ([], [BACKING_OFF], "OnFailure", "Running"),
        ([], [SUCCEEDED], "OnFailure", "Succeeded"),
        ([view("init", current=run())], [CREATING], "Always", "Pending"),
        ([view("init", current=run("exited", 2))], [CREATING], "Never", "Failed"),
        ([view("init", current=run("exited", 0))], [RUNNING], "Never", "Running"),
        (
            [view("init", current=run("exited", 1), waiting=("CrashLoopBackOff", None))],
            [CREATING],
            "OnFailure",
            "Pending",
        ),
    ],
)
def test_the_phase_follows_the_kubelets_rules(
    init: list[ContainerView], main: list[ContainerView], policy: str, phase: str
) -> None:
    assert pod_phase(init, main, policy) == phase


def test_a_deleted_pod_ends_succeeded_only_if_every_container_exited_zero() -> None:
    assert pod_phase([], [SUCCEEDED], "Always", terminal=True) == "Succeeded"
    assert pod_phase([], [SUCCEEDED, FAILED], "Always", terminal=True) == "Failed"


def test_container_states_running_terminated_and_waiting_with_last_state() -> None:
    assert container_status(RUNNING)["state"] == {"running": {"startedAt": "2027-01-15T08:00:00Z"}}
    assert container_status(RUNNING)["ready"] is True

    terminated = container_status(view(current=run("exited", 0, message=None)))
    state = terminated["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert terminated["ready"] is False and terminated["lastState"] == {}

    killed = container_status(view(current=run("exited", 137, signal=9)))["state"]["terminated"]
    assert (killed["exitCode"], killed["reason"], killed["signal"]) == (137, "Error", 9)

    start_error = run("exited", 128, reason="StartError", message='exec: "nope": not found')
    state = container_status(view(current=start_error))["state"]["terminated"]
    assert (state["reason"], state["message"]) == ("StartError", 'exec: "nope": not found')

    looping = container_status(
        view(current=run("exited", 1), restarts=2, waiting=("CrashLoopBackOff", "back-off 20s"))
    )
    assert looping["state"] == {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}
    }
    assert looping["lastState"]["terminated"]["exitCode"] == 1
    assert looping["restartCount"] == 2

    restarted = container_status(view(current=run(), previous=run("exited", 1), restarts=1))
    assert "running" in restarted["state"]
    assert restarted["lastState"]["terminated"]["exitCode"] == 1


def test_conditions_keep_their_transition_time_while_they_hold() -> None:
    before = [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    now = conditions([], [RUNNING], sandbox_ready=True, phase="Running", existing=before, now=T0)
    by_type = {c["type"]: c for c in now}
    assert by_type["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert by_type["ContainersReady"]["lastTransitionTime"] == "2027-01-15T08:00:00Z"
    assert by_type["Ready"]["reason"] is None  # null: the patch removes an old reason

    failing = conditions(
        [], [CREATING], sandbox_ready=True, phase="Pending", existing=before, now=T0
    )
    ready = next(c for c in failing if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
    assert ready["message"] == "containers with unready status: [main]"
    assert ready["lastTransitionTime"] == "2027-01-15T08:00:00Z"


def test_readiness_gates_hold_back_ready() -> None:
    gated = conditions(
        [],
        [RUNNING],
        sandbox_ready=True,
        phase="Running",
        readiness_gates=["example.com/x"],
        now=T0,
    )
    ready = next(c for c in gated if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReadinessGatesNotReady")


def test_pod_status_carries_addresses_times_and_deadline_reason() -> None:
    pod = {"metadata": {"generation": 1}, "spec": {"restartPolicy": "Never"}, "status": {}}
    status = pod_status(
        pod,
        init=[],
        main=[RUNNING],
        pod_ip="127.1.0.3",
        host_ip="127.0.0.1",
        started_at=T0,
        sandbox_ready=True,
        now=T0,
    )
    assert status["phase"] == "Running"
    assert (status["podIP"], status["podIPs"]) == ("127.1.0.3", [{"ip": "127.1.0.3"}])
    assert (status["hostIP"], status["startTime"]) == ("127.0.0.1", "2027-01-15T08:00:00Z")
    assert status["observedGeneration"] == 1

    deadline = pod_status(
        pod,
        init=[],
        main=[RUNNING],
        pod_ip=None,
        host_ip="127.0.0.1",
        started_at=None,
        sandbox_ready=True,
        now=T0,
        reason=("DeadlineExceeded", "too long"),
    )
    assert (deadline["phase"], deadline["reason"]) == ("Failed", "DeadlineExceeded")
    assert "podIP" not in deadline


@pytest.mark.parametrize(
    ("restarts", "ran", "delay"),
    [(0, 1, 0), (1, 1, 10), (2, 1, 20), (3, 1, 40), (9, 1, 300), (5, 600, 0)],
)
def test_crash_loop_back_off(restarts: int, ran: float, delay: float) -> None:
    assert restart_delay(restarts, ran) == delay
