"""SIGTERM as a request to stop: a flag the training loop checks at step boundaries.

The kubelet sends SIGTERM and waits the grace period; the handler only sets a flag, and
the loop checkpoints at the next step boundary and exits. Under torch.distributed all
ranks agree on the step: each contributes its flag to an all-reduce (MAX), so one rank
that got the signal a little later than another still stops at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set once by a stop signal (or by code); thread-safe and cheap to poll."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Route SIGTERM and SIGINT to this flag (call from the main thread)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self._event.is_set():
            log.warning("%s received: stopping at the next safe point", _name(signum))
        self.set(_name(signum))

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


def any_rank(local: bool, device: Any = None) -> bool:
    """True when ``local`` is true on any rank (an all-reduce when torch.distributed is up)."""
    import torch  # noqa: PLC0415 - torch only when distributed
    import torch.distributed as dist  # noqa: PLC0415 - torch only when distributed

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
