"""A torchrun-style launcher: one training process per local GPU, signals passed through.

Used when a Pod runs several processes (``NPROC_PER_NODE`` > 1). It stays small on purpose:
static rendezvous through ``MASTER_ADDR``/``MASTER_PORT`` (the operator's headless Service),
SIGTERM and SIGINT forwarded to every child at once (unlike an elastic agent, it never
kills a child that is still writing its checkpoint), and the children's exit codes and
termination messages folded into the Pod's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from kubetrain.api.report import EXIT_STOPPED
from kubetrain.trainer.config import Distributed
from kubetrain.trainer.runtime import EXIT_COMPLETED, Outcome

log = logging.getLogger(__name__)

PEER_EXIT_TIMEOUT = 60.0
"""After one child fails, how long the others get to exit on SIGTERM before SIGKILL."""


def child_env(
    base: Mapping[str, str], dist: Distributed, local_rank: int, log_dir: Path
) -> dict[str, str]:
    """The environment of local process ``local_rank``: torchrun's variables, its message file."""
    env = dict(base)
    env.update(
        RANK=str(dist.node_rank * dist.nproc_per_node + local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_WORLD_SIZE=str(dist.nproc_per_node),
        GROUP_RANK=str(dist.node_rank),
        MASTER_ADDR=dist.master_addr,
        MASTER_PORT=str(dist.master_port),
        KUBETRAIN_TERMINATION_LOG=str(log_dir / f"rank-{local_rank}.log"),
    )
    return env


def launch(
    command: Sequence[str],
    dist: Distributed,
    environ: Mapping[str, str] = os.environ,
    *,
    peer_exit_timeout: float = PEER_EXIT_TIMEOUT,
) -> Outcome:
    """Run ``command`` once per local rank and wait for all of them; returns the Pod's outcome."""
    with tempfile.TemporaryDirectory(prefix="kubetrain-ranks-") as tmp:
        log_dir = Path(tmp)
        children = [
            subprocess.Popen(list(command), env=child_env(environ, dist, local, log_dir))
            for local in range(dist.nproc_per_node)
        ]

        stop_requested: list[int] = []

        def forward(signum: int, _frame: FrameType | None) -> None:
            stop_requested.append(signum)
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            codes = _wait_all(children, peer_exit_timeout)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        messages = [_read(log_dir / f"rank-{local}.log") for local in range(len(children))]
    return fold(
        codes,
        messages,
        first_rank=dist.node_rank * dist.nproc_per_node,
        stop_requested=bool(stop_requested),
    )


def _wait_all(children: list[subprocess.Popen[bytes]], peer_exit_timeout: float) -> list[int]:
    """Wait for every child; once one fails, SIGTERM the others and SIGKILL them after a timeout."""
    deadline: float | None = None
    while [child.poll() for child in children].count(None):
        failed = [c for c in children if c.returncode not in (None, EXIT_COMPLETED, EXIT_STOPPED)]
        if failed and deadline is None:
            log.error(
                "a training process failed (exit %s); stopping the others", failed[0].returncode
            )
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + peer_exit_timeout
        if deadline is not None and time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    child.kill()
        _wait_any(children, 0.5)
    return [child.returncode for child in children]


def _wait_any(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
            return


def fold(
    codes: Sequence[int],
    messages: Sequence[str],
    *,
    first_rank: int = 0,
    stop_requested: bool = False,
) -> Outcome:
    """One outcome from the children's: a failure fails (a rank's own error before one killed
    by a signal), else any stop stops, else completed. A child killed by the stop signal it was
    forwarded (before it could handle it) has nothing to lose: that counts as stopped."""
    stop_signals = (-signal.SIGTERM, -signal.SIGINT) if stop_requested else ()
    codes = [EXIT_STOPPED if code in stop_signals else code for code in codes]
    failures = [i for i, code in enumerate(codes) if code not in (EXIT_COMPLETED, EXIT_STOPPED)]
    if failures:
        local = min(failures, key=lambda i: (codes[i] < 0, i))
        code = codes[local]
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        return Outcome.failed(f"rank {first_rank + local} failed ({how}): {messages[local] or how}")
    leader = messages[0] if messages else ""
    if EXIT_STOPPED in codes:
        return Outcome.stopped(leader or "stopped after a checkpoint")
    return Outcome.completed(leader or "completed")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
