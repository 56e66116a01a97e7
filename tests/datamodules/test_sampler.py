"""Sharding across ranks, the wrap-around padding rule, length grouping, and resume skipping."""

from __future__ import annotations

import collections

import lightning as L
import pytest
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import BatchSampler

from datamodules.loader import ResumableDataLoader
from datamodules.sampler import ShardedSampler


def _batches(sampler: ShardedSampler) -> list[list[int]]:
    return list(BatchSampler(sampler, sampler.batch_size, drop_last=False))


@pytest.mark.parametrize("n", [12, 13, 15, 1])
@pytest.mark.parametrize("group_by_length", [False, True])
def test_two_ranks_cover_every_record_once_plus_wraparound_padding(n, group_by_length):
    lengths = [(i * 7) % 11 for i in range(n)]
    for epoch in range(3):
        seen: collections.Counter = collections.Counter()
        steps = []
        for rank in (0, 1):
            sampler = ShardedSampler(lengths, 4, num_replicas=2, rank=rank, seed=5, group_by_length=group_by_length)
            sampler.set_epoch(epoch)
            seen.update(list(sampler))
            steps.append(len(_batches(sampler)))
        padding = (-n) % 2
        assert set(seen) == set(range(n))  # nothing dropped
        assert sum(seen.values()) == n + padding
        assert sum(c - 1 for c in seen.values()) == padding  # only the padding is repeated
        assert steps[0] == steps[1]  # every rank runs the same number of steps


def test_padding_repeats_the_first_records_of_the_epoch_order():
    shards = [ShardedSampler([1] * 5, 2, num_replicas=4, rank=r, shuffle=False).shard() for r in range(4)]
    assert shards == [[0, 4], [1, 0], [2, 1], [3, 2]]  # 5 records, 3 pads: records 0, 1, 2 again


def test_shuffle_is_seeded_per_epoch_and_equal_on_every_rank_computation():
    a, b = ShardedSampler([1] * 50, 4, seed=1), ShardedSampler([1] * 50, 4, seed=1)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(ShardedSampler([1] * 50, 4, seed=2)) != first
    assert list(ShardedSampler([1] * 50, 4, shuffle=False)) == list(range(50))


def test_group_by_length_forms_similar_length_batches_deterministically():
    lengths = [(i * 37) % 100 for i in range(1000)]
    sampler = ShardedSampler(lengths, 8, seed=3, group_by_length=True)
    batches = _batches(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    plain = _batches(ShardedSampler(lengths, 8, seed=3))
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(plain)
    assert spread < 5 < 50 < plain_spread  # tight batches instead of random ones
    assert batches == _batches(ShardedSampler(lengths, 8, seed=3, group_by_length=True))
    sampler.set_epoch(1)
    assert _batches(sampler) != batches  # new batch order (and grouping) every epoch


def test_group_by_length_keeps_the_partial_batch_last():
    sampler = ShardedSampler(list(range(103)), 10, seed=0, group_by_length=True)
    sizes = [len(b) for b in _batches(sampler)]
    assert sizes == [10] * 10 + [3]


def test_resume_skips_whole_batches_of_that_epoch_only():
    sampler = ShardedSampler([1] * 20, 3, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(2, 4)
    assert list(sampler) == full[12:]
    assert list(sampler) == full  # one-shot
    sampler.resume(2, 4)
    sampler.set_epoch(3)
    assert len(list(sampler)) == 20  # stale skip for another epoch is ignored


def test_lightning_keeps_our_sampler_under_ddp():
    """With use_distributed_sampler=True, Lightning only injects a sampler when the loader has no
    DistributedSampler; ours is one, so the loader comes back untouched."""
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_progress_bar=False)
    assert trainer._accelerator_connector.is_distributed
    sampler = ShardedSampler([1] * 10, 2, num_replicas=2, rank=1)
    loader = ResumableDataLoader(list(range(10)), batch_size=2, sampler=sampler)
    connector = trainer._data_connector
    assert not connector._requires_distributed_sampler(loader)
    assert connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader
