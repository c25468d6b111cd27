"""Batch plans and the learning-rate schedule: seeded, shardable, resumable."""

from __future__ import annotations

import math

import pytest

from kubetrain.trainer.vision import batching
from kubetrain.trainer.vision.optim import schedule_factor


def test_an_epoch_s_order_depends_only_on_seed_and_epoch() -> None:
    first = batching.epoch_batches(20, 4, seed=1, epoch=0)
    assert first == batching.epoch_batches(20, 4, seed=1, epoch=0)
    assert first != batching.epoch_batches(20, 4, seed=1, epoch=1)
    assert first != batching.epoch_batches(20, 4, seed=2, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(20))
    assert [len(b) for b in first] == [4] * 5


def test_ranks_share_an_epoch_evenly_and_cover_it() -> None:
    ranks = [batching.epoch_batches(11, 3, seed=0, epoch=4, rank=r, world=2) for r in (0, 1)]
    seen = [i for batches in ranks for b in batches for i in b]
    assert set(seen) == set(range(11)) and len(seen) == 12  # padded by one repeat
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [3, 3]


def test_a_trailing_single_image_joins_the_batch_before() -> None:
    assert [len(b) for b in batching.epoch_batches(9, 4, seed=0, epoch=0)] == [4, 5]
    assert [len(b) for b in batching.epoch_batches(1, 4, seed=0, epoch=0)] == [1]
    assert [len(b) for b in batching.epoch_batches(3, 1, seed=0, epoch=0)] == [1, 1, 1]


def test_steps_group_micro_batches_for_accumulation() -> None:
    assert batching.steps(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert len(batching.steps(5, 1)) == 5


def test_validation_shards_have_no_padding() -> None:
    assert batching.shard(5, 0, 2) == [0, 2, 4]
    assert batching.shard(5, 1, 2) == [1, 3]


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1 / 3), (1, 2 / 3), (2, 1.0), (6, 0.5), (10, 0.0)],
)
def test_warmup_then_cosine(step: int, expected: float) -> None:
    assert math.isclose(schedule_factor(step, warmup=2, total=10), expected, abs_tol=1e-9)
