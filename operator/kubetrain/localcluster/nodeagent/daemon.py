"""The node agent as a detached process of ``make cluster-up``: started, awaited, stopped.

Its PID and start time are recorded in ``<workdir>/nodeagent.json`` so that
``make cluster-down`` stops exactly that process, then the containers it left running
(found through the agent's state directory), before the control plane goes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from kubetrain.localcluster.nodeagent.files import read_json, write_json
from kubetrain.localcluster.nodeagent.runtime import stop_recorded
from kubetrain.localcluster.nodeagent.shim import proc_starttime
from kubetrain.localcluster.nodeagent.state import READY_FILE
from kubetrain.localcluster.processes import Process, tail, wait_until

RECORD = "nodeagent.json"
STATE_DIR = "nodeagent"


class AgentStartError(RuntimeError):
    """The agent process exited or did not get ready in time."""


def state_dir(workdir: Path) -> Path:
    return workdir / STATE_DIR


def start(workdir: Path, kubeconfig: Path, log: Path, timeout: float = 60.0) -> int:
    """Start the agent detached with the default pool; return its PID once it is ready."""
    state = state_dir(workdir)
    argv = [
        sys.executable,
        "-m",
        "kubetrain.localcluster.nodeagent",
        "--kubeconfig",
        str(kubeconfig),
        "--state-dir",
        str(state),
    ]
    process = Process("nodeagent", argv, log)
    process.start(tie_to_parent=False)
    assert process.pid is not None
    write_json(
        workdir / RECORD,
        {
            "pid": process.pid,
            "starttime": proc_starttime(process.pid),
            "executable": sys.executable,
            "state_dir": str(state),
            "log": str(log),
        },
    )
    ready = state / READY_FILE
    if not wait_until(lambda: ready.exists() or process.exit_code() is not None, timeout):
        stop(workdir)
        raise AgentStartError(f"the node agent did not get ready in {timeout}s:\n{tail(log)}")
    if process.exit_code() is not None:
        stop(workdir)
        raise AgentStartError(f"the node agent exited:\n{tail(log)}")
    return process.pid


def running(workdir: Path) -> bool:
    record = read_json(workdir / RECORD)
    return isinstance(record, dict) and proc_starttime(int(record["pid"])) == record["starttime"]


def stop(workdir: Path, grace_seconds: float = 10.0) -> list[str]:
    """Stop the recorded agent (by PID, if it is still that process), then its containers."""
    stopped = []
    record = read_json(workdir / RECORD)
    if isinstance(record, dict):
        pid = int(record["pid"])

        def same() -> bool:
            return bool(proc_starttime(pid) == record["starttime"])

        if same():
            os.kill(pid, signal.SIGTERM)
            if not wait_until(lambda: not same(), grace_seconds):
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not same(), 5.0)
            stopped.append("nodeagent")
        (workdir / RECORD).unlink(missing_ok=True)
    count = stop_recorded(state_dir(workdir) / "pods")
    if count:
        stopped.append(f"{count} pod container(s)")
    return stopped
