"""A training DataLoader that Lightning can checkpoint and resume mid-epoch, batch for batch.

Lightning 2.6 stores ``loader.state_dict()`` in the checkpoint for every training loader that has
``state_dict``/``load_state_dict`` (``FitLoop.on_save_checkpoint`` -> ``CombinedLoader._state_dicts``) and
calls ``load_state_dict`` on resume *before* it creates the epoch's iterator
(``FitLoop._load_combined_loader_states`` in ``setup_data``). It also counts the batches already seen
and expects the loader to keep its full ``len`` while yielding only the rest of the epoch.

What is counted: batches *handed to the consumer* by this loader's iterator. Worker processes prefetch
index batches ahead of that, which is why the count lives here and not in the sampler. Lightning's
prefetching fetcher (``_PrefetchDataFetcher``) reads one batch ahead only for loaders without a length;
this loader always has one, so at checkpoint time "handed out" equals "trained on" (the resume tests
in ``tests/datamodules/test_loader.py`` check this end to end, with and without gradient accumulation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.sampler import ShardedSampler


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ShardedSampler` with a resumable position inside the epoch.

    Takes the arguments of ``torch.utils.data.DataLoader``. If Lightning swaps the sampler for another
    one (e.g. ``overfit_batches``), the loader still works but its state is empty and resuming restarts
    the epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        start, self._resume_at = self._resume_at, 0
        self._consumed = start
        return self._counting(super().__iter__())

    def _counting(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the number of its batches already handed out."""
        if not isinstance(self.sampler, ShardedSampler):
            return {}
        return {
            "epoch": self.sampler.epoch,
            "batches_consumed": self._consumed,
            "batch_size": self.batch_size,
            "num_replicas": self.sampler.num_replicas,
            "num_samples": self.sampler.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Makes the next iteration continue where the saved one stopped.

        A finished epoch resumes at the start of the next one. If batch size, world size or dataset size
        changed, the same number of batches is skipped but the order differs from the saved run (warned).
        """
        if not state or not isinstance(self.sampler, ShardedSampler):
            return
        sampler = self.sampler
        saved = (state["batch_size"], state["num_replicas"], state["num_samples"])
        if saved != (self.batch_size, sampler.num_replicas, sampler.num_samples):
            rank_zero_warn(
                "Resuming with a different (batch_size, world size, samples per rank): saved "
                f"{saved}, now {(self.batch_size, sampler.num_replicas, sampler.num_samples)}; "
                "the rest of this epoch will not match the interrupted run exactly."
            )
        epoch, consumed = state["epoch"], state["batches_consumed"]
        if consumed >= len(self):
            sampler.resume(epoch + 1, 0)
            self._resume_at = 0
        else:
            sampler.resume(epoch, consumed)
            self._resume_at = consumed
