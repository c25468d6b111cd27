"""Pod status as a kubelet reports it, computed from what the runtime observed (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubetrain.localcluster.nodeagent.kube import Obj
from kubetrain.localcluster.nodeagent.runtime import Attempt
from kubetrain.localcluster.nodeagent.timeutil import rfc3339

AGENT_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


@dataclass(frozen=True)
class Run:
    """One attempt of a container, as reported: its runtime state, id and message."""

    attempt: Attempt
    container_id: str
    message: str | None = None  # the termination message of a finished run


@dataclass(frozen=True)
class ContainerView:
    """Everything the status of one container is built from."""

    name: str
    image: str
    current: Run | None = None
    previous: Run | None = None
    restarts: int = 0
    waiting: tuple[str, str | None] | None = None  # (reason, message) while not running

    @property
    def running(self) -> bool:
        """Running (its process started; a container still being created is waiting)."""
        return (
            self.waiting is None
            and self.current is not None
            and self.current.attempt.state == "running"
        )

    @property
    def finished(self) -> bool:
        """Terminated for good (no restart pending)."""
        return self.waiting is None and self.current is not None and not self.current.attempt.active

    @property
    def succeeded(self) -> bool:
        return self.finished and self.current is not None and self.current.attempt.exit_code == 0


def _terminated(run: Run) -> Obj:
    attempt = run.attempt
    code = attempt.exit_code if attempt.exit_code is not None else 137
    state: Obj = {
        "exitCode": code,
        "reason": attempt.reason or ("Completed" if code == 0 else "Error"),
        "containerID": run.container_id,
    }
    if attempt.signal:
        state["signal"] = attempt.signal
    message = run.message or attempt.message
    if message:
        state["message"] = message
    if attempt.started_at is not None:
        state["startedAt"] = rfc3339(attempt.started_at)
    if attempt.finished_at is not None:
        state["finishedAt"] = rfc3339(attempt.finished_at)
    return {"terminated": state}


def container_status(view: ContainerView) -> Obj:
    """One entry of ``containerStatuses`` / ``initContainerStatuses``."""
    current = view.current
    status: Obj = {
        "name": view.name,
        "image": view.image,
        "imageID": "",
        "ready": view.running,
        "started": view.running,
        "restartCount": view.restarts,
    }
    last = view.previous
    if view.waiting is not None or current is None:
        reason, message = view.waiting or ("ContainerCreating", None)
        status["state"] = {
            "waiting": {"reason": reason, **({"message": message} if message else {})}
        }
        if current is not None and not current.attempt.active:
            last = current
    elif current.attempt.state == "starting":
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    elif current.attempt.state == "running":
        started = current.attempt.started_at
        status["state"] = {"running": {"startedAt": rfc3339(started)} if started else {}}
        status["containerID"] = current.container_id
    else:
        status["state"] = _terminated(current)
        status["containerID"] = current.container_id
    status["lastState"] = _terminated(last) if last is not None else {}
    return status


def pod_phase(
    init: Sequence[ContainerView],
    main: Sequence[ContainerView],
    restart_policy: str,
    *,
    terminal: bool = False,
) -> str:
    """The Pod phase by the kubelet's rules (restarting containers count as stopped)."""
    for view in init:
        if view.succeeded:
            continue
        if restart_policy == "Never" and view.finished:
            return "Failed"
        if terminal:
            return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for view in main:
        if view.running:
            running += 1
        elif view.finished:
            stopped += 1
            succeeded += int(view.succeeded)
        elif view.current is not None and not view.current.attempt.active:
            stopped += 1  # waiting to restart
        else:
            waiting += 1
    if terminal:
        return "Succeeded" if main and succeeded == len(main) else "Failed"
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if restart_policy == "Never" else "Running"
    return "Pending"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
    """A condition; reason and message are null (removed by the patch) while it holds."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason if not ok and reason else None,
        "message": message if not ok and message else None,
    }


def conditions(
    init: Sequence[ContainerView],
    main: Sequence[ContainerView],
    *,
    sandbox_ready: bool,
    phase: str,
    readiness_gates: Iterable[str] = (),
    existing: Sequence[Obj] = (),
    now: float,
) -> list[Obj]:
    """The conditions a kubelet owns; a transition time is kept while the status holds."""
    pending_init = [v.name for v in init if not v.succeeded]
    unready = [v.name for v in main if not v.running]
    done = phase in ("Succeeded", "Failed")
    by_type = {c.get("type"): c for c in existing}
    gates_open = [g for g in readiness_gates if by_type.get(g, {}).get("status") != "True"]
    if done:
        containers_ready = _condition("ContainersReady", False, "PodCompleted")
        ready = _condition("Ready", False, "PodCompleted")
    else:
        message = f"containers with unready status: [{' '.join(unready)}]"
        containers_ready = _condition("ContainersReady", not unready, "ContainersNotReady", message)
        if unready:
            ready = _condition("Ready", False, "ContainersNotReady", message)
        else:
            gates = f"corresponding condition of pod readiness gate {gates_open!r} does not exist"
            ready = _condition("Ready", not gates_open, "ReadinessGatesNotReady", gates)
    result = [
        _condition("PodReadyToStartContainers", sandbox_ready and not done),
        _condition(
            "Initialized",
            not pending_init,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]",
        ),
        containers_ready,
        ready,
    ]
    if not init:
        result[1] = _condition("Initialized", True)
    for condition in result:
        before = by_type.get(condition["type"])
        keep = before is not None and before.get("status") == condition["status"]
        condition["lastProbeTime"] = None
        condition["lastTransitionTime"] = (
            before.get("lastTransitionTime") if keep and before else rfc3339(now)
        )
    return result


def pod_status(
    pod: Obj,
    *,
    init: Sequence[ContainerView],
    main: Sequence[ContainerView],
    pod_ip: str | None,
    host_ip: str,
    started_at: float | None,
    sandbox_ready: bool,
    now: float,
    terminal: bool = False,
    reason: tuple[str, str] | None = None,
) -> Obj:
    """The ``status`` to write for ``pod`` (only the fields a kubelet owns)."""
    spec = pod["spec"]
    phase = pod_phase(init, main, spec.get("restartPolicy", "Always"), terminal=terminal)
    if reason is not None:
        phase = "Failed"
    existing: list[Obj] = (pod.get("status") or {}).get("conditions") or []
    status: Obj = {
        "phase": phase,
        "conditions": conditions(
            init,
            main,
            sandbox_ready=sandbox_ready,
            phase=phase,
            readiness_gates=[g["conditionType"] for g in spec.get("readinessGates") or []],
            existing=existing,
            now=now,
        ),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": [container_status(v) for v in main],
    }
    if init:
        status["initContainerStatuses"] = [container_status(v) for v in init]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if started_at is not None:
        status["startTime"] = rfc3339(started_at)
    if reason is not None:
        status["reason"], status["message"] = reason
    generation = pod["metadata"].get("generation")
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def without_times(status: Mapping[str, object]) -> Obj:
    """``status`` minus condition transition times: for deciding whether it changed."""
    copy = dict(status)
    raw = status.get("conditions")
    conditions_list = raw if isinstance(raw, list) else []
    copy["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions_list
    ]
    return copy
