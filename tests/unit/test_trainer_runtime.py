"""How a trainer ends: exit codes, the termination message, SIGTERM, and the launcher that
folds several processes into one Pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, read_permanent
from kubetrain.trainer.config import Distributed
from kubetrain.trainer.launch import child_env, fold, standalone
from kubetrain.trainer.runtime import (
    MAX_MESSAGE_BYTES,
    Outcome,
    TrainerError,
    one_line,
    run_entry,
    write_termination_message,
)
from kubetrain.trainer.signals import StopFlag, any_rank
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"KUBETRAIN_TERMINATION_LOG": str(tmp_path / "termination-log")}


def message(environ: dict[str, str]) -> str:
    return Path(environ["KUBETRAIN_TERMINATION_LOG"]).read_text()


def test_completed_and_stopped_runs_exit_with_their_codes(environ: dict[str, str]) -> None:
    assert run_entry(lambda: Outcome.completed("completed 10 steps"), environ) == 0
    assert message(environ) == "completed 10 steps\n"
    assert run_entry(lambda: Outcome.stopped("stopped at step 4"), environ) == EXIT_STOPPED == 143
    assert message(environ) == "stopped at step 4\n"


def test_a_user_error_is_permanent_with_its_reason_and_message(environ: dict[str, str]) -> None:
    def bad() -> Outcome:
        raise TrainerError(
            "dataset /data/train.jsonl has 3 usable samples; at least 5 are required"
        )

    assert run_entry(bad, environ) == EXIT_PERMANENT == 78
    text = message(environ)
    assert text == (
        "ConfigurationError: dataset /data/train.jsonl has 3 usable samples; "
        "at least 5 are required\n"
    )
    assert read_permanent(text) == (
        "ConfigurationError",
        "dataset /data/train.jsonl has 3 usable samples; at least 5 are required",
    )

    def missing() -> Outcome:
        raise TrainerError("s3://data/train.jsonl does not exist", reason="DatasetNotFound")

    assert run_entry(missing, environ) == EXIT_PERMANENT
    assert read_permanent(message(environ)) == (
        "DatasetNotFound",
        "s3://data/train.jsonl does not exist",
    )


def test_a_crash_exits_1_naming_the_exception(environ: dict[str, str]) -> None:
    def crash() -> Outcome:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    assert run_entry(crash, environ) == 1
    assert message(environ) == "RuntimeError: CUDA out of memory.\n"


def test_messages_are_one_line_within_the_kubelet_limit() -> None:
    assert one_line("a\nb\t c") == "a b c"
    long = one_line("é" * 5000)
    assert len(long.encode()) <= MAX_MESSAGE_BYTES and long.endswith("...")


def test_an_unwritable_termination_log_is_not_fatal(tmp_path: Path) -> None:
    write_termination_message(
        "done", {"KUBETRAIN_TERMINATION_LOG": str(tmp_path / "no" / "such" / "dir")}
    )


def test_sigterm_sets_the_stop_flag_instead_of_killing() -> None:
    flag = StopFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        eventually(flag.is_set, timeout=5, what="the stop flag")
        assert flag.reason == "SIGTERM"
        assert any_rank(flag.is_set()) is True  # no process group: the local flag
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_outcome_of_several_processes() -> None:
    assert fold([0, 0], ["completed 9 steps", ""]) == Outcome.completed("completed 9 steps")
    assert fold([143, 143], ["stopped at step 3", ""]).code == EXIT_STOPPED
    assert fold([0, 143], ["", ""]).code == EXIT_STOPPED
    failed = fold([143, 1], ["stopped", "dataset too small"], first_rank=2)
    assert failed == Outcome.failed("rank 3 failed (exit code 1): dataset too small")
    assert fold([-9, 0], ["", ""]).message == "rank 0 was killed by SIGKILL: no message, no stderr"


def test_a_failure_names_the_rank_that_died_first_not_the_peers_that_lost_it() -> None:
    """Rank 2 vanished (SIGKILL, no message of its own); 0, 1 and 3 then failed in a
    collective. The Pod's message is rank 2's end and its last words on stderr."""
    peer_lost = "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:4021"
    tails = ["", "", "step 7 loss 2.1\nloading eval batch 3\n", ""]
    failed = fold(
        [1, 1, -9, 1], [peer_lost, peer_lost, "", peer_lost], order=[2, 0, 3, 1], tails=tails
    )
    assert failed == Outcome.failed(
        "rank 2 was killed by SIGKILL (then rank 0, 1, 3 failed too): "
        "step 7 loss 2.1 | loading eval batch 3"
    )
    early = fold([1, 0], [peer_lost, "completed"], order=[1, 0], first_rank=4)
    assert early.message == (
        f"rank 4 failed (exit code 1) (after rank 5 had exited with code 0): {peer_lost}"
    )


def test_a_rank_the_launcher_stopped_for_anothers_failure_is_stopped_not_failed() -> None:
    """Rank 1 failed; the launcher then SIGTERMed rank 0 before its handler was up (a loaded
    machine), or SIGKILLed it at the peer timeout: rank 0 did not fail, it was stopped."""
    for code in (-15, -9):
        failed = fold([code, 1], ["", "boom"], order=[1, 0], signalled={0})
        assert failed.message == "rank 1 failed (exit code 1): boom"
    own = fold([1, 1], ["lost the peer", "boom"], order=[1, 0], signalled={0})
    assert own.message == "rank 1 failed (exit code 1) (then rank 0 failed too): boom"


def test_a_rank_s_stderr_tail_in_the_message_is_bounded() -> None:
    tail = "".join(f"line {i} " + "x" * 100 + "\n" for i in range(1000))
    message = fold([-6], [""], order=[0], tails=[tail]).message
    assert message.startswith("rank 0 was killed by SIGABRT: ") and message.endswith(
        "line 999 " + "x" * 100
    )
    assert len(message.encode()) < 1400


def test_a_one_pod_job_meets_on_a_loopback_port_of_its_own() -> None:
    """The rendezvous store listens on every address: Pods sharing a host's network (the local
    cluster) must not all use the job's MASTER_PORT, or a second job meets the first's store."""
    one_pod = Distributed(
        world_size=4, nproc_per_node=4, master_addr="job-0.job", master_port=29500
    )
    mine = standalone(one_pod)
    assert (mine.master_addr, mine.world_size) == ("127.0.0.1", 4) and mine.master_port != 29500
    two_pods = Distributed(world_size=8, nproc_per_node=4, nnodes=2, master_addr="m", master_port=5)
    assert standalone(two_pods) == two_pods


def test_each_child_gets_torchrun_variables(tmp_path: Path) -> None:
    dist = Distributed(
        world_size=4, nproc_per_node=2, nnodes=2, node_rank=1, master_addr="m", master_port=5
    )
    env = child_env({"PATH": "/bin"}, dist, 1, tmp_path)
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT")
    assert [env[name] for name in names] == ["3", "1", "4", "2", "5"]
    assert env["KUBETRAIN_TERMINATION_LOG"] == str(tmp_path / "rank-1.log")


CHILD = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    rank = int(os.environ["LOCAL_RANK"])
    log = pathlib.Path(os.environ["KUBETRAIN_TERMINATION_LOG"])
    mode = os.environ.get("FAIL_MODE", "exit")
    if rank == int(os.environ.get("FAIL_RANK", "-1")):
        if mode == "kill":  # vanishes: no message, a last word on stderr
            print("rank %d: evaluating batch 3" % rank, file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        log.write_text("boom on rank %d" % rank)
        sys.exit(1)
    def stop(*_):
        if mode == "kill":  # what a peer of a vanished rank says
            log.write_text("RuntimeError: [gloo] Connection closed by peer")
            sys.exit(1)
        log.write_text("stopped at step 3 (rank %d)" % rank)
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    pathlib.Path(os.environ["READY_DIR"], str(rank)).touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        signal.pause()
    """
)

LAUNCHER = textwrap.dedent(
    """
    import sys
    from kubetrain.trainer.config import Distributed
    from kubetrain.trainer.launch import launch
    from kubetrain.trainer.runtime import run_entry
    dist = Distributed(world_size=2, nproc_per_node=2)
    child = [sys.executable, "-c", sys.argv[1]]
    sys.exit(run_entry(lambda: launch(child, dist, peer_exit_timeout=20)))
    """
)


def start_launcher(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "ready"
    ready.mkdir()
    log = tmp_path / "termination-log"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, CHILD],
        env=os.environ
        | {
            "READY_DIR": str(ready),
            "KUBETRAIN_TERMINATION_LOG": str(log),
            "PYTHONPATH": str(ROOT / "operator"),
        }
        | env,
    )
    return process, ready


def test_the_launcher_forwards_sigterm_and_exits_stopped(tmp_path: Path) -> None:
    process, ready = start_launcher(tmp_path)
    try:
        eventually(lambda: len(list(ready.iterdir())) == 2, timeout=30, what="both ranks ready")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == EXIT_STOPPED
    finally:
        process.kill()
    assert (tmp_path / "termination-log").read_text() == "stopped at step 3 (rank 0)\n"


def test_when_one_rank_fails_the_launcher_stops_the_others_and_fails(tmp_path: Path) -> None:
    process, _ = start_launcher(tmp_path, FAIL_RANK="1")
    try:
        assert process.wait(60) == 1
    finally:
        process.kill()
    assert (
        tmp_path / "termination-log"
    ).read_text() == "rank 1 failed (exit code 1): boom on rank 1\n"


def test_a_rank_killed_by_a_signal_is_named_with_its_last_words(tmp_path: Path) -> None:
    """Rank 1 dies by SIGKILL after a line on stderr; rank 0 then fails on the lost peer. The
    Pod's termination message names rank 1, the signal and that line."""
    process, _ = start_launcher(tmp_path, FAIL_RANK="1", FAIL_MODE="kill")
    try:
        assert process.wait(60) == 1
    finally:
        process.kill()
    said = (tmp_path / "termination-log").read_text()
    # Rank 0 fails on the lost peer when its SIGTERM handler was up in time ("then rank 0
    # failed too"); before it, the launcher's SIGTERM stops it: either way rank 1 is named.
    assert said.startswith("rank 1 was killed by SIGKILL")
    assert said.endswith(": rank 1: evaluating batch 3\n")
