"""Deterministic, rank-sharded, optionally length-grouped sampling.

Every rank computes the same global order from ``seed + epoch`` (a seeded ``randperm``, or file order
when not shuffling), pads it by **wrap-around** to a multiple of the world size, and takes every
``num_replicas``-th index starting at its rank, exactly like ``torch.utils.data.DistributedSampler``
with ``drop_last=False``. Padding rule, precisely: ``(-N) % num_replicas`` records (the first ones of
the epoch's order) are seen twice per epoch, all others exactly once; nothing is dropped. Padding is
needed so every rank runs the same number of steps (otherwise DDP hangs at the epoch end).

The sampler *is* a ``DistributedSampler`` subclass, so Lightning with ``use_distributed_sampler=True``
sees a distributed sampler already and leaves it in place (``_requires_distributed_sampler`` in
``lightning/pytorch/trainer/connectors/data_connector.py``); rank and world size are passed in by the
data module from ``trainer.distributed_sampler_kwargs``.

``group_by_length`` (train and eval): the rank's shard is cut into mega-batches of ``50 * batch_size``,
each sorted by length and cut into batches; the full batches are shuffled (seeded) and a partial batch,
if any, goes last. The index stream therefore still splits into the same batches under a plain
``BatchSampler``, and records of similar length share a batch, wasting less padding.

Exact resume: :meth:`resume` makes the next iteration of a given epoch skip its first ``n`` batches
(the data loader counts consumed batches; see ``datamodules/loader.py``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from torch.utils.data.distributed import DistributedSampler

MEGABATCH_MULT = 50


class ShardedSampler(DistributedSampler):
    """Index sampler for one rank; see the module docstring for the order, padding and grouping rules.

    Args:
        lengths: Token length of every record (the order and count of the dataset).
        batch_size: Per-rank batch size; batches are formed (for grouping) and skipped (for resume)
            in units of it.
        num_replicas: Number of data-parallel ranks.
        rank: This rank, in ``[0, num_replicas)``.
        shuffle: Reshuffle every epoch with ``seed + epoch`` (train); False keeps file order (eval).
        seed: Base seed; must be equal on all ranks.
        group_by_length: Batch records of similar length together.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self._skip: Optional[tuple[int, int]] = None  # (epoch, batches to skip)

    def resume(self, epoch: int, batches_consumed: int) -> None:
        """Sets the epoch and makes its next iteration start after ``batches_consumed`` batches."""
        self.set_epoch(epoch)
        self._skip = (epoch, batches_consumed) if batches_consumed > 0 else None

    def shard(self) -> list[int]:
        """This rank's full index order for the current epoch (no resume skipping)."""
        order = self._global_order()
        indices = order[self.rank : self.total_size : self.num_replicas]
        return self._group(indices) if self.group_by_length else indices

    def __iter__(self) -> Iterator[int]:
        indices = self.shard()
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            indices = indices[skip[1] * self.batch_size :]
        return iter(indices)

    def _global_order(self) -> list[int]:
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        padding = self.total_size - n
        if padding and n:
            order += (order * math.ceil(padding / n))[:padding]
        return order

    def _group(self, indices: list[int]) -> list[int]:
        size = self.batch_size
        mega = size * MEGABATCH_MULT
        batches: list[list[int]] = []
        for start in range(0, len(indices), mega):
            chunk = sorted(indices[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(chunk[j : j + size] for j in range(0, len(chunk), size))
        full = [b for b in batches if len(b) == size]
        partial = [b for b in batches if len(b) < size]  # at most one: mega is a multiple of size
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}-{self.rank}").shuffle(full)
        return [i for batch in full + partial for i in batch]
