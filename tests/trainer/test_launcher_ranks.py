"""The runtime's launcher with the real LoRA trainer: one-Pod jobs on one host keep their
rendezvous apart, and a rank that dies is named, with how, in the Pod's message."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kubetrain.api.report import EXIT_STOPPED
from tests.trainer.conftest import TrainerRun, Workspace, free_port, launcher_pod, spec

pytestmark = pytest.mark.timeout(600)


def rank_pid(run: TrainerRun, local_rank: int) -> int:
    """The PID of the launcher's child process ``local_rank``."""
    pid = run.process.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no rank {local_rank} under the launcher {pid}:\n{run.output()}")


def test_two_one_pod_jobs_on_one_host_meet_on_ports_of_their_own(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    """Pods on the local cluster share the host's network, and every job gets the operator's
    one MASTER_PORT; the rendezvous store binds it on every address. A second one-Pod job
    trains while the first holds its store (it failed on EADDRINUSE, or its ranks joined the
    first job's store, before each launcher took a port of its own)."""
    job, port = spec(workspace.model), str(free_port())
    first = launcher_pod() | {"MASTER_ADDR": "127.0.0.2", "MASTER_PORT": port}
    held = start_trainer(tmp_path / "first", job, env=first | {"KUBETRAIN_PAUSE_AT_STEP": "1"})
    held.wait_for_step(1)  # its ranks met and hold at step 1 until SIGTERM
    second = launcher_pod() | {"MASTER_ADDR": "127.0.0.3", "MASTER_PORT": port}
    run = start_trainer(tmp_path / "second", job, env=second)
    assert run.wait() == 0, run.output()
    held.stop()
    assert held.wait() in (0, EXIT_STOPPED), held.output()


def test_a_rank_killed_mid_run_is_named_in_the_pods_message(
    workspace: Workspace, start_trainer: Any, tmp_path: Path
) -> None:
    """Rank 1 vanishes (SIGKILL, as the OOM killer would); rank 0 loses its peer. The Pod
    fails with rank 1, the signal and rank 1's last stderr lines, not rank 0's lost peer."""
    run = start_trainer(
        tmp_path / "run",
        spec(workspace.model),
        env=launcher_pod() | {"KUBETRAIN_PAUSE_AT_STEP": "2"},
    )
    run.wait_for_step(2)
    os.kill(rank_pid(run, 1), signal.SIGKILL)
    assert run.wait() == 1, run.output()
    message = run.message()
    assert message.startswith("rank 1 was killed by SIGKILL"), message
    assert "rank 1 was killed by SIGKILL" in run.output()  # the launcher's log says so too
