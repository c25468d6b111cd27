"""Child processes of the local cluster: started with logs, stopped by their own PIDs."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls into it


def _die_with_parent() -> None:
    """In the child: ask the kernel to SIGKILL us when the parent process dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Process:
    """One component of the local cluster run as a child process."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    runs: str | None = None
    """The executable the PID runs once started, when ``argv[0]`` hands over to it (chroot)."""
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    def start(self, *, tie_to_parent: bool) -> None:
        """Start the process with stdout and stderr in its log file.

        With ``tie_to_parent`` the kernel kills it when this Python process dies, so a
        crashed test run leaves nothing behind; without it the process outlives us (the
        ``cluster-up`` case) and is stopped later by its recorded PID.
        """
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                # Only a prctl() call runs between fork and exec, which is safe with threads.
                preexec_fn=_die_with_parent if tie_to_parent else None,  # noqa: PLW1509
            )
        self.pid = self.popen.pid

    def exit_code(self) -> int | None:
        """The exit code if the process has ended, else None."""
        if self.popen is not None:
            return self.popen.poll()
        if self.pid is not None and not pid_is(self.pid, self.executable):
            return -1
        return None

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; reaps the child."""
        if self.pid is None:
            return
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(grace_seconds)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        else:
            stop_pid(self.pid, self.executable, grace_seconds)

    @property
    def executable(self) -> str:
        return self.runs or self.argv[0]


def pid_is(pid: int, executable: str) -> bool:
    """True when ``pid`` is alive and runs ``executable`` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if not cmdline:
        return False  # a zombie
    return cmdline.split(b"\0", 1)[0].decode(errors="replace") == executable


def stop_pid(pid: int, executable: str, grace_seconds: float = 10.0) -> bool:
    """Stop a process that is not our child, by PID, if it still runs ``executable``.

    Returns True when it had to be killed with SIGKILL.
    """
    if not pid_is(pid, executable):
        return False
    os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not pid_is(pid, executable), grace_seconds):
        return False
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_is(pid, executable), 5.0)
    return True


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


EXTRAS = "extras"
"""Folder of a cluster's workdir where processes started beside it are recorded."""


def record_extra(workdir: Path, name: str, pid: int, executable: str) -> None:
    """Record a process started for this local cluster (e.g. the demo's operator)."""
    folder = workdir / EXTRAS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"pid": pid, "executable": executable}))


def running_extra(workdir: Path, name: str) -> bool:
    try:
        recorded = json.loads((workdir / EXTRAS / f"{name}.json").read_text())
    except FileNotFoundError:
        return False
    return pid_is(recorded["pid"], recorded["executable"])


def stop_extras(workdir: Path) -> list[str]:
    """Stop every recorded extra process by its PID; returns their names."""
    stopped = []
    for path in sorted((workdir / EXTRAS).glob("*.json")):
        recorded = json.loads(path.read_text())
        stop_pid(recorded["pid"], recorded["executable"])
        path.unlink()
        stopped.append(path.stem)
    return stopped
