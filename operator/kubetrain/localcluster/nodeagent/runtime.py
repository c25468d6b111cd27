"""The container runtime: launch containers through the shim, observe them, signal them.

Each run of a container (an *attempt*) has a directory holding what the shim reads
(``launch.json``) and writes (``shim.json``, ``pid.json``, ``exit.json``); the state of
an attempt is read back from those files and /proc alone, so an agent that restarts
finds its running containers again. A PID is trusted only together with the start time
recorded for it, so a reused PID is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetrain.localcluster.nodeagent import shim
from kubetrain.localcluster.nodeagent.files import read_json, write_json

STARTING_GRACE_SECONDS = 15.0  # a launch with no shim record after this long is lost

State = Literal["starting", "running", "exited", "lost"]


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted at ``target`` in the container's mount namespace."""

    source: str
    target: str
    readOnly: bool = False  # noqa: N815 (the shim's JSON field)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the shim needs to start one container process."""

    argv: list[str]
    env: dict[str, str]
    log: str
    cwd: str | None = None
    hostname: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    isolate: bool = True


@dataclass(frozen=True)
class Attempt:
    """What became of one launch of a container."""

    state: State
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")


def _alive(record: Any) -> bool:
    if not isinstance(record, dict) or "pid" not in record:
        return False
    starttime = record.get("starttime")
    return starttime is not None and shim.proc_starttime(int(record["pid"])) == starttime


class Runtime:
    """Starts shims and answers questions about attempts, by their directories."""

    def __init__(self) -> None:
        self._shims: dict[Path, subprocess.Popen[bytes]] = {}
        self._finished: dict[Path, Attempt] = {}

    def launch(self, attempt_dir: Path, spec: LaunchSpec) -> None:
        """Write the launch record and start the shim (which starts the container)."""
        attempt_dir.mkdir(parents=True, exist_ok=True)
        Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
        write_json(attempt_dir / "launch.json", asdict(spec))
        with (attempt_dir / "shim.log").open("ab") as shim_log:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", shim.__file__, str(attempt_dir)],
                stdin=subprocess.DEVNULL,
                stdout=shim_log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={"LANG": "C.UTF-8"},
                start_new_session=True,
            )
        write_json(
            attempt_dir / "shim.json",
            {"pid": popen.pid, "starttime": shim.proc_starttime(popen.pid)},
        )
        self._shims[attempt_dir] = popen

    def inspect(self, attempt_dir: Path) -> Attempt:
        """The attempt's state, from its files and /proc."""
        cached = self._finished.get(attempt_dir)
        if cached is not None:
            return cached
        attempt = self._inspect(attempt_dir)
        if not attempt.active:
            self._finished[attempt_dir] = attempt
        return attempt

    def _inspect(self, attempt_dir: Path) -> Attempt:
        ended = read_json(attempt_dir / "exit.json")
        if ended is not None:
            return _exited(ended)
        started = read_json(attempt_dir / "pid.json")
        started_at = float(started["startedAt"]) if isinstance(started, dict) else None
        if _alive(started):
            return Attempt("running", started_at=started_at)
        popen = self._shims.get(attempt_dir)
        shim_running = (
            popen.poll() is None if popen else _alive(read_json(attempt_dir / "shim.json"))
        )
        if shim_running:
            return Attempt("running" if started else "starting", started_at=started_at)
        ended = read_json(attempt_dir / "exit.json")  # the shim may have just finished
        if ended is not None:
            return _exited(ended)
        launched = attempt_dir / "launch.json"
        if (
            popen is None
            and not (attempt_dir / "shim.json").exists()
            and launched.exists()
            and time.time() - launched.stat().st_mtime < STARTING_GRACE_SECONDS
        ):
            return Attempt("starting")
        return Attempt(
            "lost",
            started_at=started_at,
            finished_at=time.time(),
            exit_code=137,
            reason="ContainerStatusUnknown",
            message="the container's process ended while no shim was watching it",
        )

    def signal(self, attempt_dir: Path, number: int) -> bool:
        """Signal the container's process group; False when it is not (yet) running."""
        started = read_json(attempt_dir / "pid.json")
        if not _alive(started):
            return False
        try:
            os.killpg(int(started["pid"]), number)
        except ProcessLookupError:
            return False
        return True

    def reap(self) -> None:
        """Collect the exit statuses of finished shims (they are this process's children)."""
        for attempt_dir, popen in list(self._shims.items()):
            if popen.poll() is not None:
                del self._shims[attempt_dir]

    def forget(self, under: Path) -> None:
        """Drop what is cached about the attempts below ``under`` (a removed Pod)."""
        for cache in (self._finished, self._shims):
            for attempt_dir in [d for d in cache if d.is_relative_to(under)]:
                del cache[attempt_dir]


def _exited(record: dict[str, Any]) -> Attempt:
    return Attempt(
        "exited",
        started_at=record.get("startedAt"),
        finished_at=record.get("finishedAt"),
        exit_code=int(record["exitCode"]),
        signal=record.get("signal"),
        reason=record.get("reason"),
        message=record.get("message"),
    )


def stop_recorded(pods_dir: Path, grace_seconds: float = 10.0) -> int:
    """Stop every container recorded under ``pods_dir`` without the API (cluster-down).

    SIGTERM to each live container's group, SIGKILL after ``grace_seconds``; PIDs are
    checked against their recorded start times. Returns how many were running.
    """
    runtime = Runtime()
    attempts = [
        d for d in pods_dir.glob("*/containers/*/*") if d.is_dir() and runtime.inspect(d).active
    ]
    for attempt_dir in attempts:
        runtime.signal(attempt_dir, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while any(runtime.inspect(d).active for d in attempts) and time.monotonic() < deadline:
        time.sleep(0.05)
    for attempt_dir in attempts:
        runtime.signal(attempt_dir, signal.SIGKILL)
    return len(attempts)
