"""Callbacks for ftzoo runs."""

from __future__ import annotations

import json
from typing import Any

import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from zoo.outputs import atomic_file


class PredictionWriter(BasePredictionWriter):
    """Write what ``lightning predict`` generates to a JSONL file, one record per prompt.

    Each line holds the task, prompt, generation and, where the data has answers, the
    extracted answer and whether it is correct. Lines are in the data's order, whatever order
    the batches ran in (both answer through :func:`zoo.inference.greedy_answers`, and the data
    modules batch predictions exactly as they batch ``test``, so that each answer is the one
    ``test`` scored even where bf16 rounding in a batch of other shapes could flip a near-tie). Under DDP each rank predicts its shard and rank 0 writes every rank's
    rows, each record once. The file appears only once every batch is written (a temporary sibling
    is renamed into place).

    Args:
        output_file: the JSONL file to write.
    """

    def __init__(self, output_file: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        rows = [row for batch in predictions for row in batch]
        indices = [i for batch in (batch_indices[0] if batch_indices else []) for i in batch]
        indexed = len(indices) == len(rows)  # each row's index in the data (Lightning tracks them)
        pairs = list(zip(indices, rows)) if indexed else list(enumerate(rows))
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, pairs)  # every rank predicted its shard: rank 0 writes them all
            pairs = [pair for part in gathered for pair in part]
        if not trainer.is_global_zero:
            return
        if indexed:  # the data's order; a record the sampler repeated to even out the ranks, once
            pairs = sorted(dict(pairs).items(), key=lambda pair: pair[0])
        with atomic_file(self.output_file) as handle:
            for _, row in pairs:
                handle.write(json.dumps(row) + "\n")


class TokenCounter(Callback):
    """Count the tokens a fit trains on: every non-padding token, and the response tokens
    the loss covers. Methods compared on one budget must see the same counts."""

    def __init__(self) -> None:
        self.tokens = 0
        self.response_tokens = 0
        self.batches = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.tokens += int(batch["attention_mask"].sum())
        self.response_tokens += int((batch["labels"] != -100).sum())
        self.batches += 1
