"""One Pod on one of the agent's nodes: sandbox, containers and status, advanced by ``sync``.

``sync`` is level-based and never blocks: each call looks at the Pod (or its absence)
and at what the runtime reports, takes the next steps (create the sandbox, start or
restart a container, signal one that must stop, delete the finished Pod) and writes the
status when it changed. Everything it needs after a restart is on disk.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetrain.localcluster.nodeagent.downward import Addresses
from kubetrain.localcluster.nodeagent.env import ConfigError, command_line, container_env, expand
from kubetrain.localcluster.nodeagent.events import Events
from kubetrain.localcluster.nodeagent.files import write_atomic
from kubetrain.localcluster.nodeagent.kube import STRATEGIC_PATCH, ApiError, Kube, Obj
from kubetrain.localcluster.nodeagent.network import pod_hostname, write_in_place
from kubetrain.localcluster.nodeagent.runtime import Attempt, LaunchSpec, Mount, Runtime
from kubetrain.localcluster.nodeagent.state import Layout, PodRecord
from kubetrain.localcluster.nodeagent.status import ContainerView, Run, pod_status, without_times
from kubetrain.localcluster.nodeagent.volumes import (
    VolumeError,
    Volumes,
    container_mounts,
    fetch_data,
)

log = logging.getLogger(__name__)

HOST_IP = "127.0.0.1"
TERMINAL = ("Succeeded", "Failed")
DEFAULT_GRACE_SECONDS = 30
MIN_GRACE_SECONDS = 2.0  # a kubelet gives every container at least this long after SIGTERM
MESSAGE_LIMIT = 4096  # bytes of a termination message, as a kubelet caps it
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
VOLUME_REFRESH_SECONDS = 60.0
RETRY_SECONDS = 1.0
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass
class PodContext:
    """What every Pod worker shares: clients, the state directory and the agent's views."""

    kube: Kube
    layout: Layout
    runtime: Runtime
    volumes: Volumes
    events: Events
    base_env: Mapping[str, str]
    service_env: Mapping[str, str]
    node_allocatable: Callable[[str], Mapping[str, str]]
    hosts: Callable[[Obj, str], str]
    allocate_ip: Callable[[], str]


def restart_delay(restarts: int, ran_seconds: float) -> float:
    """Crash-loop back-off before restart number ``restarts + 1``: none for the first,
    then 10 s doubling to 5 min; a run of 10 min or more resets it."""
    if restarts == 0 or ran_seconds >= BACKOFF_RESET:
        return 0.0
    return float(min(BACKOFF_START * 2 ** (restarts - 1), BACKOFF_MAX))


def container_id(uid: str, name: str, attempt: int) -> str:
    return "kubetrain://" + hashlib.sha256(f"{uid}/{name}/{attempt}".encode()).hexdigest()


@dataclass
class _Stopping:
    since: float
    deadline: float
    termed: set[Path] = field(default_factory=set)
    killed: set[Path] = field(default_factory=set)


class PodWorker:
    """Runs one Pod (identified by UID) to completion and cleans up after it."""

    def __init__(self, ctx: PodContext, uid: str, record: PodRecord | None) -> None:
        self.ctx = ctx
        self.uid = uid
        self.record = record
        self.pod: Obj | None = None
        self.volume_paths: dict[str, tuple[str, bool]] | None = None
        self._volumes_at = 0.0
        self._sandbox_retry_at = 0.0
        self._waiting: dict[str, tuple[str, str | None]] = {}
        self._retry_at: dict[str, float] = {}
        self._stopping: _Stopping | None = None
        self._delete_sent = False
        self._posted: Obj | None = None
        self._messages: dict[Path, str | None] = {}
        self._hosts: str | None = None

    # -- the entry point --------------------------------------------------------------

    def sync(self, pod: Obj | None, now: float) -> bool:
        """Advance the Pod one step; True once it is gone and cleaned up."""
        if pod is not None:
            self.pod = pod
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return self._terminate(pod, now)
        if _phase(pod) in TERMINAL:  # finished for good: nothing runs, nothing to refresh
            if self.record is not None:
                self._post_status(pod, now)
            return False
        if self.record is None:
            if now < self._sandbox_retry_at:
                return False
            if not self._create_sandbox(pod, now):
                self._sandbox_retry_at = now + RETRY_SECONDS
                self._post_status(pod, now)
                return False
        else:
            self._refresh_volumes(pod, now)
        self._update_hosts(pod)
        deadline = self._deadline_exceeded(pod, now)
        if deadline:
            self._stop_containers(pod, now, self._grace(pod))
            reason = ("DeadlineExceeded", "Pod was active on the node longer than its deadline")
            self._post_status(pod, now, reason=reason)
            return False
        self._advance(pod, now)
        self._post_status(pod, now)
        return False

    def stop_all(self, number: int) -> list[Path]:
        """Signal every running container (agent shutdown); returns their attempts."""
        active = [d for _, d, a in self._latest_all() if a.active]
        for attempt_dir in active:
            self.ctx.runtime.signal(attempt_dir, number)
        return active

    # -- sandbox ----------------------------------------------------------------------

    def _create_sandbox(self, pod: Obj, now: float) -> bool:
        meta, spec = pod["metadata"], pod["spec"]
        host_network = bool(spec.get("hostNetwork", False))
        ip = HOST_IP if host_network else self.ctx.allocate_ip()
        try:
            self.volume_paths = self.ctx.volumes.prepare(pod, Addresses(ip, HOST_IP))
        except VolumeError as err:
            self.ctx.events.emit(pod, "FailedMount", str(err), warning=True)
            return False
        record = PodRecord(
            uid=self.uid,
            namespace=meta["namespace"],
            name=meta["name"],
            node=spec["nodeName"],
            ip=ip,
            started_at=now,
            host_network=host_network,
            grace_seconds=int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)),
        )
        pod_dir = self.ctx.layout.pod_dir(self.uid)
        write_atomic(pod_dir / "hostname", f"{pod_hostname(pod)}\n".encode())
        write_in_place(str(pod_dir / "hosts"), self.ctx.hosts(pod, ip))
        self.ctx.layout.save(record)
        self.record = record
        self._volumes_at = now
        return True

    def _refresh_volumes(self, pod: Obj, now: float) -> None:
        """Re-project configMap, secret, downward API and token files (and retry failures)."""
        interval = VOLUME_REFRESH_SECONDS if self.volume_paths is not None else RETRY_SECONDS
        if now - self._volumes_at < interval or self.record is None:
            return
        self._volumes_at = now
        try:
            self.volume_paths = self.ctx.volumes.prepare(pod, Addresses(self.record.ip, HOST_IP))
        except VolumeError as err:
            self.ctx.events.emit(pod, "FailedMount", str(err), warning=True)

    def _update_hosts(self, pod: Obj) -> None:
        if self.record is None or self.record.host_network:
            return
        content = self.ctx.hosts(pod, self.record.ip)
        if content != self._hosts:
            write_in_place(str(self.ctx.layout.pod_dir(self.uid) / "hosts"), content)
            self._hosts = content

    # -- containers -------------------------------------------------------------------

    def _latest(self, name: str) -> tuple[int, Path, Attempt] | None:
        attempts = self.ctx.layout.attempts(self.uid, name)
        if not attempts:
            return None
        number = attempts[-1]
        attempt_dir = self.ctx.layout.attempt_dir(self.uid, name, number)
        return number, attempt_dir, self.ctx.runtime.inspect(attempt_dir)

    def _latest_all(self) -> list[tuple[str, Path, Attempt]]:
        containers = self.ctx.layout.pod_dir(self.uid) / "containers"
        if not containers.is_dir():
            return []
        found = []
        for directory in sorted(containers.iterdir()):
            latest = self._latest(directory.name)
            if latest is not None:
                found.append((directory.name, latest[1], latest[2]))
        return found

    def _restart_pending(self, pod: Obj, attempt: Attempt, init: bool) -> bool:
        """Whether a finished attempt will be followed by another (restartPolicy)."""
        if attempt.active or _phase(pod) in TERMINAL or pod["metadata"].get("deletionTimestamp"):
            return False
        policy = pod["spec"].get("restartPolicy", "Always")
        failed = attempt.exit_code != 0
        if init:
            return failed and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and failed)

    def _advance(self, pod: Obj, now: float) -> None:
        """Start whatever should run now: init containers in order, then the others."""
        spec = pod["spec"]
        for container in spec.get("initContainers") or []:
            latest = self._latest(container["name"])
            if latest is None:
                self._start(pod, container, 0, now)
                return
            number, _, attempt = latest
            if attempt.active:
                return
            if attempt.state == "exited" and attempt.exit_code == 0:
                continue
            if self._restart_pending(pod, attempt, init=True):
                self._restart(pod, container, number, attempt, now)
            return
        for container in spec["containers"]:
            latest = self._latest(container["name"])
            if latest is None:
                self._start(pod, container, 0, now)
                continue
            number, _, attempt = latest
            if self._restart_pending(pod, attempt, init=False):
                self._restart(pod, container, number, attempt, now)

    def _restart(self, pod: Obj, container: Obj, number: int, attempt: Attempt, now: float) -> None:
        """Start the next attempt once the crash-loop back-off has passed."""
        if self._due(number, attempt, now):
            self._start(pod, container, number + 1, now)
        else:
            name = container["name"]
            message = f"Back-off restarting failed container {name}"
            self.ctx.events.emit(pod, "BackOff", message, warning=True, container=name)

    @staticmethod
    def _due(number: int, attempt: Attempt, now: float) -> bool:
        finished = attempt.finished_at or now
        ran = finished - (attempt.started_at or finished)
        return now >= finished + restart_delay(number, ran)

    def _start(self, pod: Obj, container: Obj, number: int, now: float) -> None:
        name = container["name"]
        record, volumes = self.record, self.volume_paths
        if record is None or volumes is None or now < self._retry_at.get(name, 0.0):
            return
        try:
            env = container_env(
                pod,
                container,
                addresses=Addresses(record.ip, HOST_IP),
                lookup=self._lookup,
                service_env=self.ctx.service_env,
                node_allocatable=self.ctx.node_allocatable(record.node),
            )
            argv = command_line(container, env)
            mounts = container_mounts(container, volumes, lambda text: expand(text, env.get))
        except (ConfigError, ValueError, OSError, ApiError) as err:
            self._waiting[name] = ("CreateContainerConfigError", str(err))
            self._retry_at[name] = now + RETRY_SECONDS
            self.ctx.events.emit(pod, "Failed", f"Error: {err}", warning=True, container=name)
            return
        attempt_dir = self.ctx.layout.attempt_dir(self.uid, name, number)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        (attempt_dir / "termination-log").touch()
        hostname = None if record.host_network else pod_hostname(pod)
        spec = LaunchSpec(
            argv=argv,
            env={**self.ctx.base_env, "HOSTNAME": hostname or record.node, **env},
            log=str(self.ctx.layout.log_path(record, name, number)),
            cwd=container.get("workingDir"),
            hostname=hostname,
            mounts=mounts + self._system_mounts(container, attempt_dir, mounts),
        )
        self.ctx.runtime.launch(attempt_dir, spec)
        self._waiting.pop(name, None)
        self.ctx.events.emit(pod, "Started", f"Started container {name}", container=name)

    def _system_mounts(self, container: Obj, attempt_dir: Path, user: list[Mount]) -> list[Mount]:
        """The termination-message file, /etc/hosts and /etc/hostname (unless overridden)."""
        assert self.record is not None
        taken = {m.target for m in user}
        pod_dir = self.ctx.layout.pod_dir(self.uid)
        wanted = [
            Mount(
                str(attempt_dir / "termination-log"),
                container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
            )
        ]
        if not self.record.host_network:
            wanted.append(Mount(str(pod_dir / "hosts"), "/etc/hosts", readOnly=True))
            wanted.append(Mount(str(pod_dir / "hostname"), "/etc/hostname", readOnly=True))
        return [m for m in wanted if m.target not in taken]

    def _lookup(self, kind: str, name: str) -> dict[str, str] | None:
        assert self.record is not None
        data = fetch_data(self.ctx.kube, self.record.namespace, kind, name)
        return None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}

    # -- stopping ---------------------------------------------------------------------

    def _grace(self, pod: Obj | None) -> float:
        """Seconds between SIGTERM and SIGKILL: the deletion's grace period, else the
        Pod's (the last one seen, for a Pod that vanished), at least two seconds."""
        pod = pod or self.pod
        if pod is None:
            grace = float(self.record.grace_seconds if self.record else DEFAULT_GRACE_SECONDS)
        elif pod["metadata"].get("deletionTimestamp") and (
            pod["metadata"].get("deletionGracePeriodSeconds") is not None
        ):
            grace = float(pod["metadata"]["deletionGracePeriodSeconds"])
        else:
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        return max(grace, MIN_GRACE_SECONDS)

    def _stop_containers(self, pod: Obj | None, now: float, grace: float) -> bool:
        """SIGTERM every running container's group, SIGKILL at the deadline; True when
        nothing runs any more."""
        active = [(name, d) for name, d, a in self._latest_all() if a.active]
        if not active:
            return True
        if self._stopping is None:
            self._stopping = _Stopping(since=now, deadline=now + grace)
            for name, _ in active:
                if pod is not None:
                    self.ctx.events.emit(
                        pod, "Killing", f"Stopping container {name}", container=name
                    )
        stopping = self._stopping
        stopping.deadline = min(stopping.deadline, stopping.since + grace)  # a shorter re-delete
        for _, attempt_dir in active:
            if now >= stopping.deadline:
                if attempt_dir not in stopping.killed and self.ctx.runtime.signal(
                    attempt_dir, signal.SIGKILL
                ):
                    stopping.killed.add(attempt_dir)
            elif attempt_dir not in stopping.termed and self.ctx.runtime.signal(
                attempt_dir, signal.SIGTERM
            ):
                stopping.termed.add(attempt_dir)
        return False

    def _terminate(self, pod: Obj | None, now: float) -> bool:
        """Stop a deleted Pod's containers; then delete it for good and clean up."""
        stopped = self._stop_containers(pod, now, self._grace(pod))
        if pod is not None and self.record is not None:
            self._post_status(pod, now, terminal=stopped)
        if not stopped:
            return False
        if pod is None:
            self._cleanup()
            return True
        if not self._delete_sent:
            meta = pod["metadata"]
            try:
                self.ctx.kube.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )
            except ApiError as err:
                if not (err.not_found or err.conflict):
                    log.warning("deleting pod %s/%s: %s", meta["namespace"], meta["name"], err)
                    return False
            self._delete_sent = True
        return False

    def _deadline_exceeded(self, pod: Obj, now: float) -> bool:
        limit = pod["spec"].get("activeDeadlineSeconds")
        return (
            limit is not None and self.record is not None and now - self.record.started_at >= limit
        )

    def _cleanup(self) -> None:
        self.ctx.runtime.forget(self.ctx.layout.pod_dir(self.uid))
        self.ctx.volumes.forget(self.uid)
        self.ctx.events.forget(self.uid)
        self.ctx.layout.remove(self.uid)

    # -- status -----------------------------------------------------------------------

    def _message(self, container: Obj, attempt_dir: Path, attempt: Attempt) -> str | None:
        """The termination message: the file at terminationMessagePath, or the log tail
        for FallbackToLogsOnError when that file is empty and the container failed."""
        if attempt_dir in self._messages:
            return self._messages[attempt_dir]
        try:
            text = (attempt_dir / "termination-log").read_bytes()[:MESSAGE_LIMIT]
        except OSError:
            text = b""
        policy = container.get("terminationMessagePolicy", "File")
        if not text.strip() and policy == "FallbackToLogsOnError" and attempt.exit_code != 0:
            assert self.record is not None
            number = int(attempt_dir.name)
            log_path = self.ctx.layout.log_path(self.record, container["name"], number)
            try:
                lines = log_path.read_bytes().splitlines(keepends=True)[-FALLBACK_LINES:]
            except OSError:
                lines = []
            text = b"".join(lines)[-FALLBACK_BYTES:]
        message = text.decode(errors="replace") or None
        self._messages[attempt_dir] = message
        return message

    def _views(self, pod: Obj, now: float) -> tuple[list[ContainerView], list[ContainerView]]:
        spec = pod["spec"]
        init = [self._view(pod, c, True, now) for c in spec.get("initContainers") or []]
        main = [self._view(pod, c, False, now) for c in spec["containers"]]
        return init, main

    def _view(self, pod: Obj, container: Obj, is_init: bool, now: float) -> ContainerView:
        name, image = container["name"], str(container.get("image", ""))
        latest = self._latest(name) if self.record is not None else None
        waiting = self._waiting.get(name)
        if latest is None:
            has_init = bool(pod["spec"].get("initContainers"))
            reason = "PodInitializing" if has_init else "ContainerCreating"
            return ContainerView(name, image, waiting=waiting or (reason, None))
        number, attempt_dir, attempt = latest
        current = Run(
            attempt,
            container_id(self.uid, name, number),
            None if attempt.active else self._message(container, attempt_dir, attempt),
        )
        previous = None
        if number > 0:
            before_dir = self.ctx.layout.attempt_dir(self.uid, name, number - 1)
            before = self.ctx.runtime.inspect(before_dir)
            previous = Run(
                before,
                container_id(self.uid, name, number - 1),
                self._message(container, before_dir, before),
            )
        if waiting is None and self._restart_pending(pod, attempt, is_init):
            finished = attempt.finished_at or now
            delay = restart_delay(number, finished - (attempt.started_at or finished))
            reason = "CrashLoopBackOff" if delay else "ContainerCreating"
            meta = pod["metadata"]
            message = (
                f"back-off {delay:.0f}s restarting failed container={name} "
                f"pod={meta['name']}_{meta['namespace']}({self.uid})"
            )
            waiting = (reason, message if delay else None)
        return ContainerView(name, image, current, previous, number, waiting)

    def _post_status(
        self,
        pod: Obj,
        now: float,
        *,
        terminal: bool = False,
        reason: tuple[str, str] | None = None,
    ) -> None:
        init, main = self._views(pod, now)
        record = self.record
        status = pod_status(
            pod,
            init=init,
            main=main,
            pod_ip=record.ip if record else None,
            host_ip=HOST_IP,
            started_at=record.started_at if record else None,
            sandbox_ready=record is not None,
            now=now,
            terminal=terminal,
            reason=reason,
        )
        comparable = without_times(status)
        if comparable == self._posted:
            return
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:
            self.ctx.kube.patch(
                path, {"metadata": {"uid": self.uid}, "status": status}, STRATEGIC_PATCH
            )
        except ApiError as err:
            if not (err.not_found or err.conflict):
                log.warning("status of pod %s/%s: %s", meta["namespace"], meta["name"], err)
            return
        self._posted = comparable


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase", "Pending"))
