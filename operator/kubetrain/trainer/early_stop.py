"""Early stopping from the training log: stateless, so it survives a stop and a resume.

The decision is recomputed from the Trainer's log history (restored with every
checkpoint) rather than kept in memory, so a resumed run stops where an uninterrupted
one would.
"""

from __future__ import annotations

import math
from typing import Any

from kubetrain.trainer.session import current_epoch


def epoch_values(history: list[dict[str, Any]], key: str) -> list[float]:
    """One value of ``key`` per finished epoch (the mean of its logged values), from the log."""
    per_epoch: dict[int, list[float]] = {}
    for record in history:
        if key in record and "epoch" in record:
            per_epoch.setdefault(current_epoch(float(record["epoch"])), []).append(
                float(record[key])
            )
    return [sum(v) / len(v) for _, v in sorted(per_epoch.items()) if v]


def should_stop_early(values: list[float], patience: int, min_delta: float) -> bool:
    """Whether the last ``patience`` epochs all failed to improve on the best before them."""
    best, waited = math.inf, 0
    for value in values:
        if value < best - min_delta:
            best, waited = value, 0
        else:
            waited += 1
    return waited >= patience
