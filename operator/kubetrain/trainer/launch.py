"""A torchrun-style launcher: one training process per local GPU, signals passed through.

Used when a Pod runs several processes (``NPROC_PER_NODE`` > 1). It stays small on purpose:
static rendezvous (a one-Pod job on a loopback port of its own, like ``torchrun
--standalone``; several Pods through ``MASTER_ADDR``/``MASTER_PORT``, the operator's
headless Service), SIGTERM and SIGINT forwarded to every child at once (unlike an elastic
agent, it never kills a child that is still writing its checkpoint), and the children's exit
codes and termination messages folded into the Pod's: a failed run names the rank that
ended first, how (exit code or signal) and what it last wrote on stderr, not the survivors'
"Connection closed by peer".
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO

from kubetrain.api.report import EXIT_STOPPED
from kubetrain.trainer.config import Distributed
from kubetrain.trainer.runtime import EXIT_COMPLETED, Outcome

log = logging.getLogger(__name__)

PEER_EXIT_TIMEOUT = 60.0
"""After one child fails, how long the others get to exit on SIGTERM before SIGKILL."""
STDERR_TAIL_BYTES = 8192
"""How much of each child's stderr the launcher keeps (the end), to say why a rank died."""
REASON_TAIL_BYTES = 1200
"""How much of that tail goes into the termination message (the kubelet keeps 4 KiB)."""


def standalone(dist: Distributed) -> Distributed:
    """The rendezvous of a one-Pod job: loopback and a free port of its own, never the job's
    ``MASTER_PORT``. The store binds that port on every address, and Pods that share a host's
    network (the local cluster's node agent) would otherwise meet another job's store."""
    if dist.nnodes != 1:
        return dist
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return replace(dist, master_addr="127.0.0.1", master_port=port)


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


class StderrTail:
    """Copies a child's stderr to the launcher's (the container log) and keeps its end."""

    def __init__(self, pipe: IO[bytes], sink: IO[bytes], limit: int = STDERR_TAIL_BYTES) -> None:
        self._pipe, self._sink, self._limit = pipe, sink, limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="stderr-tail", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            with contextlib.suppress(OSError, ValueError):  # a closed log loses lines, not ranks
                self._sink.write(chunk)
                self._sink.flush()
            with self._lock:
                self._chunks.append(chunk)
                self._size += len(chunk)
                while self._size - len(self._chunks[0]) >= self._limit:
                    self._size -= len(self._chunks.popleft())
        self._pipe.close()

    def text(self, timeout: float = 5.0) -> str:
        """The end of what the child wrote (after its pipe closed, or ``timeout``)."""
        self._thread.join(timeout)
        with self._lock:
            data = b"".join(self._chunks)[-self._limit :]
        return data.decode(errors="replace")


def launch(
    command: Sequence[str],
    dist: Distributed,
    environ: Mapping[str, str] = os.environ,
    *,
    peer_exit_timeout: float = PEER_EXIT_TIMEOUT,
) -> Outcome:
    """Run ``command`` once per local rank and wait for all of them; returns the Pod's outcome."""
    dist = standalone(dist)
    with tempfile.TemporaryDirectory(prefix="kubetrain-ranks-") as tmp:
        log_dir = Path(tmp)
        children: list[subprocess.Popen[bytes]] = []
        tails: list[StderrTail] = []
        for local in range(dist.nproc_per_node):
            child = subprocess.Popen(
                list(command), env=child_env(environ, dist, local, log_dir), stderr=subprocess.PIPE
            )
            assert child.stderr is not None
            children.append(child)
            tails.append(StderrTail(child.stderr, sys.stderr.buffer))
        exits = Exits(children)

        stop_requested: list[int] = []

        def forward(signum: int, _frame: FrameType | None) -> None:
            stop_requested.append(signum)
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            signalled = _wait_all(children, exits, peer_exit_timeout)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        messages = [_read(log_dir / f"rank-{local}.log") for local in range(len(children))]
    return fold(
        [child.returncode for child in children],
        messages,
        first_rank=dist.node_rank * dist.nproc_per_node,
        stop_requested=bool(stop_requested),
        order=exits.order(),
        tails=[tail.text() for tail in tails],
        signalled=signalled,
    )


class Exits:
    """The order in which the children end, as it happens (one waiting thread per child): the
    rank that died first is the cause, the others only lost a peer."""

    def __init__(self, children: Sequence[subprocess.Popen[bytes]]) -> None:
        self._order: list[int] = []
        self._changed = threading.Condition()
        for local, child in enumerate(children):
            threading.Thread(
                target=self._wait, args=(local, child), name=f"rank-{local}-exit", daemon=True
            ).start()

    def _wait(self, local: int, child: subprocess.Popen[bytes]) -> None:
        child.wait()
        with self._changed:
            self._order.append(local)
            self._changed.notify_all()

    def order(self) -> list[int]:
        with self._changed:
            return list(self._order)

    def wait(self, count: int, timeout: float) -> list[int]:
        """The order so far, once more than ``count`` children have ended or ``timeout`` passed."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._order) > count, timeout)
            return list(self._order)


def _wait_all(
    children: list[subprocess.Popen[bytes]], exits: Exits, peer_exit_timeout: float
) -> set[int]:
    """Wait for every child; once one fails, SIGTERM the others and SIGKILL them after a
    timeout. The children it signalled so (local ranks)."""
    deadline: float | None = None
    ended: list[int] = []
    signalled: set[int] = set()
    while len(ended) < len(children):
        ended = exits.wait(len(ended), 0.5)
        failed = [i for i in ended if children[i].returncode not in (EXIT_COMPLETED, EXIT_STOPPED)]
        if failed and deadline is None:
            log.error(
                "local rank %d %s; stopping the others",
                failed[0],
                describe(children[failed[0]].returncode),
            )
            for local, child in enumerate(children):
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                    signalled.add(local)
            deadline = time.monotonic() + peer_exit_timeout
        if deadline is not None and time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    child.kill()
    for child in children:
        child.wait()
    return signalled


def describe(code: int) -> str:
    """How a child ended, in words: ``exit code 1`` or ``was killed by SIGKILL``."""
    if code >= 0:
        return f"failed (exit code {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def fold(
    codes: Sequence[int],
    messages: Sequence[str],
    *,
    first_rank: int = 0,
    stop_requested: bool = False,
    order: Sequence[int] | None = None,
    tails: Sequence[str] | None = None,
    signalled: Collection[int] = (),
) -> Outcome:
    """One outcome from the children's: a failure fails, else any stop stops, else completed.
    A failure names the first rank to fail (in ``order``, the order the children ended; else a
    rank's own error before one killed by a signal), how it ended and why: its termination
    message, else the end of its stderr. A child killed by the stop signal it was forwarded
    (before it could handle it) has nothing to lose: that counts as stopped. So does one the
    launcher itself stopped, after another failed (``signalled``), that died of that signal:
    it did not fail, it was stopped for the one that did."""
    stop_signals = (-signal.SIGTERM, -signal.SIGINT) if stop_requested else ()
    ours = (-signal.SIGTERM, -signal.SIGKILL)
    codes = [
        EXIT_STOPPED if code in stop_signals or (i in signalled and code in ours) else code
        for i, code in enumerate(codes)
    ]
    failures = [i for i, code in enumerate(codes) if code not in (EXIT_COMPLETED, EXIT_STOPPED)]
    if failures:
        if order is not None and (ranked := [i for i in order if i in failures]):
            local = ranked[0]
        else:
            local = min(failures, key=lambda i: (codes[i] < 0, i))
        why = messages[local] or _tail(tails[local] if tails else "") or "no message, no stderr"
        earlier = list(order[: list(order).index(local)]) if order and local in order else []
        notes = [f"after rank {first_rank + i} had exited with code {codes[i]}" for i in earlier]
        if others := [first_rank + i for i in failures if i != local]:
            notes.append(f"then rank {', '.join(map(str, others))} failed too")
        note = f" ({'; '.join(notes)})" if notes else ""
        return Outcome.failed(f"rank {first_rank + local} {describe(codes[local])}{note}: {why}")
    leader = messages[0] if messages else ""
    if EXIT_STOPPED in codes:
        return Outcome.stopped(leader or "stopped after a checkpoint")
    return Outcome.completed(leader or "completed")


def _tail(text: str, limit: int = REASON_TAIL_BYTES) -> str:
    """The last lines of ``text`` within ``limit`` bytes, on one line (`` | `` between lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line.encode()) + 3
        if size > limit:
            if not kept:
                kept.append("..." + line.encode()[-(limit - 3) :].decode(errors="ignore"))
            break
        kept.append(line)
    return " | ".join(reversed(kept))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
