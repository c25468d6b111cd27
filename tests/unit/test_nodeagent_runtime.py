"""The container runtime with its real shim: exits, signals, mounts, re-adoption."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetrain.localcluster.nodeagent.files import write_json
from kubetrain.localcluster.nodeagent.runtime import (
    Attempt,
    LaunchSpec,
    Mount,
    Runtime,
    stop_recorded,
)
from kubetrain.localcluster.nodeagent.shim import proc_starttime
from tests.polling import eventually

ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    runtime = Runtime()
    yield runtime
    runtime.reap()


def launch(
    runtime: Runtime,
    attempt: Path,
    script: str,
    *,
    mounts: list[Mount] | None = None,
    cwd: str | None = None,
    **extra: str,
) -> None:
    spec = LaunchSpec(
        argv=["python", "-c", script],
        env={**ENV, **extra},
        log=str(attempt / "out.log"),
        cwd=cwd,
        hostname="job-worker-0",
        mounts=mounts or [],
    )
    runtime.launch(attempt, spec)


def ended(runtime: Runtime, attempt: Path) -> Attempt | None:
    state = runtime.inspect(attempt)
    return state if state.state == "exited" else None


def test_an_exit_code_and_the_output_are_recorded(runtime: Runtime, tmp_path: Path) -> None:
    launch(runtime, tmp_path, "import os, sys; print('hi', os.environ['X']); sys.exit(7)", X="1")
    done = eventually(lambda: ended(runtime, tmp_path), timeout=20, what="exit")
    assert (done.exit_code, done.signal, done.reason) == (7, None, None)
    assert done.started_at is not None and done.finished_at is not None
    assert (tmp_path / "out.log").read_text() == "hi 1\n"


def test_a_missing_command_is_a_start_error(runtime: Runtime, tmp_path: Path) -> None:
    runtime.launch(
        tmp_path, LaunchSpec(argv=["no-such-trainer"], env=ENV, log=str(tmp_path / "out.log"))
    )
    done = eventually(lambda: ended(runtime, tmp_path), timeout=20, what="exit")
    assert (done.exit_code, done.reason) == (128, "StartError")
    assert done.message == 'exec: "no-such-trainer": executable file not found in $PATH'


def test_signals_reach_the_whole_process_group(runtime: Runtime, tmp_path: Path) -> None:
    script = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open('/tmp/child-pid', 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    marker = tmp_path / "tmp"
    marker.mkdir()
    launch(runtime, tmp_path / "attempt", script, mounts=[Mount(str(marker), "/tmp")])
    attempt = tmp_path / "attempt"
    child = int(
        eventually(lambda: (marker / "child-pid").exists() and (marker / "child-pid").read_text())
    )
    assert runtime.inspect(attempt).state == "running"

    assert runtime.signal(attempt, signal.SIGTERM)
    done = eventually(lambda: ended(runtime, attempt), timeout=20, what="exit")
    assert (done.exit_code, done.signal) == (128 + signal.SIGTERM, signal.SIGTERM)
    eventually(lambda: proc_starttime(child) is None, what="the child to be gone too")
    assert not runtime.signal(attempt, signal.SIGKILL)  # nothing left to signal


def test_volumes_are_bind_mounted_privately_and_read_only_when_asked(
    runtime: Runtime, tmp_path: Path
) -> None:
    data, config, scratch = tmp_path / "data", tmp_path / "config", tmp_path / "scratch"
    for directory in (data, config, scratch):
        directory.mkdir()
    (config / "lr").write_text("0.1")
    script = (
        "import json, os, socket\n"
        "open('/tmp/checkpoints/ckpt', 'w').write('saved')\n"
        "try:\n"
        "    open('/tmp/config/other', 'w')\n"
        "    writable = True\n"
        "except OSError:\n"
        "    writable = False\n"
        "report = {'lr': open('/tmp/config/lr').read(), 'writable': writable,\n"
        "          'hostname': socket.gethostname(), 'tmp': sorted(os.listdir('/tmp')),\n"
        "          'cwd': os.getcwd()}\n"
        "open('/dev/termination-log', 'w').write(json.dumps(report))\n"
    )
    message = tmp_path / "message"
    message.touch()
    mounts = [
        Mount(str(data), "/tmp/checkpoints"),
        Mount(str(config), "/tmp/config", readOnly=True),
        # An emptyDir over /tmp hides the sources above (they live under /tmp too):
        # they are opened before anything is mounted, so they still appear.
        Mount(str(scratch), "/tmp"),
        Mount(str(message), "/dev/termination-log"),
    ]
    launch(runtime, tmp_path / "attempt", script, mounts=mounts, cwd="/tmp/checkpoints/run")
    done = eventually(lambda: ended(runtime, tmp_path / "attempt"), timeout=20, what="exit")
    assert done.exit_code == 0, (tmp_path / "attempt" / "out.log").read_text()
    report = json.loads(message.read_text())
    # A checkout under /tmp (its virtualenv, its package) is bound back over the emptyDir.
    host = [Path(sys.prefix), Path(__file__).resolve().parents[2]]
    kept = {p.parts[2] for p in host if p.parts[1:2] == ("tmp",) and len(p.parts) > 2}
    assert report == {
        "lr": "0.1",
        "writable": False,
        "hostname": "job-worker-0",
        "tmp": sorted({"checkpoints", "config"} | kept),
        "cwd": "/tmp/checkpoints/run",  # workingDir, created if missing
    }
    assert (data / "ckpt").read_text() == "saved" and (data / "run").is_dir()
    # The mount points were made inside the emptyDir; outside the namespace they are empty.
    assert sorted(p.name for p in scratch.iterdir()) == sorted({"checkpoints", "config"} | kept)
    assert list((scratch / "checkpoints").iterdir()) == []


def test_a_new_runtime_adopts_a_running_attempt(tmp_path: Path) -> None:
    first = Runtime()
    launch(first, tmp_path, "import time\ntime.sleep(60)\n")
    eventually(lambda: first.inspect(tmp_path).state == "running", what="running")
    record = json.loads((tmp_path / "pid.json").read_text())

    second = Runtime()  # as after an agent restart: no Popen, only the files
    assert second.inspect(tmp_path) == Attempt("running", started_at=record["startedAt"])
    assert second.signal(tmp_path, signal.SIGKILL)
    done = eventually(lambda: ended(second, tmp_path), timeout=20, what="exit")
    assert done.exit_code == 128 + signal.SIGKILL
    first.reap()


def test_a_process_that_vanished_unrecorded_is_lost(runtime: Runtime, tmp_path: Path) -> None:
    write_json(tmp_path / "launch.json", {})
    write_json(tmp_path / "shim.json", {"pid": os.getpid(), "starttime": -1})
    write_json(tmp_path / "pid.json", {"pid": os.getpid(), "starttime": -1, "startedAt": 1.0})
    lost = runtime.inspect(tmp_path)
    assert (lost.state, lost.exit_code, lost.reason) == ("lost", 137, "ContainerStatusUnknown")
    assert not runtime.signal(tmp_path, signal.SIGKILL)  # a PID whose start time differs


def test_stop_recorded_stops_every_live_container(tmp_path: Path) -> None:
    runtime = Runtime()
    attempts = [tmp_path / "pods" / uid / "containers" / "main" / "0" for uid in ("a", "b")]
    for attempt in attempts:
        launch(runtime, attempt, "import time\ntime.sleep(60)\n")
    for attempt in attempts:
        eventually(lambda a=attempt: runtime.inspect(a).state == "running", what="running")
    assert stop_recorded(tmp_path / "pods", grace_seconds=5) == 2
    for attempt in attempts:
        assert eventually(lambda a=attempt: ended(runtime, a), timeout=20).signal == signal.SIGTERM
    runtime.reap()


def test_start_times_identify_processes() -> None:
    assert proc_starttime(os.getpid()) is not None
    assert proc_starttime(2**22 + 1) is None
