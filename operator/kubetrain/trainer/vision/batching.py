"""Which images each rank trains on at each step of an epoch: seeded, shardable, resumable.

The order depends only on (seed, epoch), so a run resumed in the middle of an epoch skips
exactly the batches it had trained on. Each rank takes every world-th image of the epoch's
order (the order is padded so ranks get equally many), and a trailing batch of a single
image is folded into the one before (BatchNorm cannot train on one image).
"""

from __future__ import annotations

import math

import numpy as np


def epoch_batches(
    count: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """The batches (image indices) of rank ``rank`` in epoch ``epoch``."""
    order = (
        np.random.default_rng([seed, epoch, 0xBA7C]).permutation(count)
        if shuffle
        else np.arange(count)
    )
    total = math.ceil(count / world) * world
    order = np.resize(order, total)  # pads by repeating from the start
    mine = [int(i) for i in order[rank::world]]
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1 and batch_size > 1:
        batches[-2].extend(batches.pop())
    return batches


def steps_per_epoch(count: int, batch_size: int, accumulation: int, world: int = 1) -> int:
    """Optimizer steps in an epoch (the same for every epoch and rank)."""
    batches = epoch_batches(count, batch_size, seed=0, epoch=0, world=world)
    return len(steps(len(batches), accumulation))


def steps(batches: int, accumulation: int) -> list[range]:
    """Which micro-batches make up each optimizer step."""
    return [range(i, min(i + accumulation, batches)) for i in range(0, batches, accumulation)]


def shard(count: int, rank: int, world: int) -> list[int]:
    """The validation images rank ``rank`` scores (every world-th, no padding)."""
    return list(range(rank, count, world))
