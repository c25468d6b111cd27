"""The container shim: runs one container process and records how it ended.

Started by the agent as ``python -I -S shim.py ATTEMPT_DIR`` in a session of its own,
it outlives the agent (as a containerd shim outlives a kubelet), so a restarted agent
re-adopts the container instead of losing it. It reads ``launch.json``, forks the
container into a process group of its own, in a private mount (and UTS) namespace in
which the Pod's volumes are bind-mounted at their mountPaths, then execs the command.
It writes ``pid.json`` once the command runs and ``exit.json`` when it ends.

Standard library only: it runs before (and without) the agent's imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
START_ERROR_CODE = 128  # what container runtimes report when the command cannot start


def proc_starttime(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when it is gone.

    A PID together with its start time names one process for good: PIDs are reused,
    start times of a reused PID differ. Zombies count as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _write_json(directory: str, name: str, value: dict[str, Any]) -> None:
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(value, handle)
    os.replace(tmp, os.path.join(directory, name))


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args}: {os.strerror(errno)}")


def _mountpoint(target: str, directory: bool) -> None:
    """Make ``target`` exist as a directory or an empty file to mount over."""
    if os.path.lexists(target):
        if os.path.isdir(target) != directory:
            kind = "a directory" if directory else "a file"
            raise OSError(f"cannot mount {kind} at {target}: it exists as another kind")
        return
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


def isolate(mounts: list[dict[str, Any]], hostname: str | None) -> None:
    """Enter a private mount namespace (and UTS namespace) and bind-mount ``mounts``.

    Every source is opened before anything is mounted, so a volume mounted over a
    parent of another volume's source (an emptyDir at /tmp, say) does not hide it.
    """
    _libc_call("unshare", CLONE_NEWNS | (CLONE_NEWUTS if hostname else 0))
    _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    if hostname:
        name = hostname.encode()
        _libc_call("sethostname", name, len(name))
    opened = [(mount, os.open(mount["source"], os.O_PATH)) for mount in mounts]
    opened.sort(key=lambda pair: len(PurePosixPath(pair[0]["target"]).parts))
    kept = [(path, os.open(path, os.O_PATH)) for path in _host_paths() if os.path.isdir(path)]
    for mount, fd in opened:
        _bind(fd, mount["target"], read_only=bool(mount.get("readOnly")))
    for path, fd in kept:
        try:
            shadowed = not os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            shadowed = True
        if shadowed:
            _bind(fd, path, read_only=True)
        else:
            os.close(fd)


def _host_paths() -> list[str]:
    """What the process needs from this host: the interpreter, its virtualenv, this package.

    A volume mounted over one of their parents (the trainers' emptyDir at /tmp over a
    checkout in /tmp, say) would hide them, so they are bound back, read-only.
    """
    package_root = str(Path(__file__).resolve().parents[3])
    environment = str(
        Path(sys.executable).parent.parent
    )  # the virtualenv (sys.prefix lies under -S)
    return sorted({environment, sys.prefix, sys.base_prefix, package_root}, key=len)


def _bind(fd: int, target: str, *, read_only: bool) -> None:
    _mountpoint(target, stat.S_ISDIR(os.fstat(fd).st_mode))
    _libc_call(
        "mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None
    )
    if read_only:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        _libc_call("mount", b"none", target.encode(), None, flags, None)
    os.close(fd)


def _child(spec: dict[str, Any], log_fd: int) -> None:
    """In the forked child: isolate, wire stdio to the log, exec the command."""
    os.setpgid(0, 0)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    if spec.get("isolate", True):
        isolate(spec.get("mounts", []), spec.get("hostname"))
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    cwd = spec.get("cwd") or "/"
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except FileNotFoundError:
        raise OSError(f'exec: "{argv[0]}": executable file not found in $PATH') from None
    except PermissionError:
        raise OSError(f'exec: "{argv[0]}": permission denied') from None


def _wait(pid: int) -> tuple[int, int | None]:
    """Reap ``pid``; return (exit code, signal) with signals as 128 + number."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 255, None
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status), None
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            return 128 + number, number


def run(attempt_dir: str) -> int:
    with open(os.path.join(attempt_dir, "launch.json")) as handle:
        spec: dict[str, Any] = json.load(handle)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # only the agent stops containers
    log_fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    errors_r, errors_w = os.pipe()  # close-on-exec: EOF means the exec succeeded
    started = time.time()
    pid = os.fork()
    if pid == 0:
        os.close(errors_r)
        try:
            _child(spec, log_fd)
        except BaseException as err:
            os.write(errors_w, str(err).encode(errors="replace")[:4000])
        os._exit(START_ERROR_CODE)
    os.close(errors_w)
    with os.fdopen(errors_r, "rb") as errors:
        failure = errors.read().decode(errors="replace")
    if failure:
        _wait(pid)
        _write_json(
            attempt_dir,
            "exit.json",
            {
                "exitCode": START_ERROR_CODE,
                "reason": "StartError",
                "message": failure,
                "startedAt": started,
                "finishedAt": time.time(),
            },
        )
        return 0
    _write_json(
        attempt_dir,
        "pid.json",
        {"pid": pid, "starttime": proc_starttime(pid), "startedAt": started},
    )
    code, killed_by = _wait(pid)
    finished = time.time()
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # what the container left behind in its group
    _write_json(
        attempt_dir,
        "exit.json",
        {"exitCode": code, "signal": killed_by, "startedAt": started, "finishedAt": finished},
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
