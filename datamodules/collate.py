"""Batching examples into the tensors the LightningModule expects.

Keys by mode (B = batch size, T = longest example, P = longest prompt):

* ``train``: ``input_ids``, ``attention_mask``, ``labels`` (long, B x T, right-padded). ``labels`` is
  -100 on prompt tokens and padding, so the loss covers the response and its EOS only.
* ``eval``: the train keys, plus ``prompt_input_ids`` / ``prompt_attention_mask`` (B x P, the prompt
  alone, left-padded; the evaluation steps strip the padding and answer through
  :func:`zoo.inference.greedy_answers`),
  ``answers: list[str]`` and ``tasks: list[str]``.
* ``predict``: ``prompt_input_ids``, ``prompt_attention_mask``, ``tasks``, ``answers`` (possibly empty
  strings) and ``prompts: list[str]`` (the prompt text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from datamodules.encode import Example

IGNORE_INDEX = -100
CollateMode = Literal["train", "eval", "predict"]


def pad(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads token lists to one length.

    Args:
        seqs: Token id lists.
        value: Padding id.
        left: Pad on the left (for generation) instead of the right.

    Returns:
        ``(ids, mask)``, both long tensors of shape (len(seqs), longest); mask is 1 on real tokens.
    """
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


class Collator:
    """Builds a batch dict from a list of :class:`Example` (a class, so worker processes can pickle it).

    Args:
        pad_id: Padding token id (the tokenizer's pad token, or EOS when it has none).
        mode: ``"train"``, ``"eval"`` or ``"predict"`` (see the module docstring for the keys).
    """

    def __init__(self, pad_id: int, mode: CollateMode = "train") -> None:
        if mode not in ("train", "eval", "predict"):
            raise ValueError(f"unknown collate mode {mode!r}")
        self.pad_id = pad_id
        self.mode = mode

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        if self.mode != "predict":
            batch.update(self._full_sequences(examples))
        if self.mode != "train":
            prompt_ids, prompt_mask = pad([e.prompt_ids for e in examples], self.pad_id, left=True)
            batch["prompt_input_ids"] = prompt_ids
            batch["prompt_attention_mask"] = prompt_mask
            batch["answers"] = [e.answer for e in examples]
            batch["tasks"] = [e.task for e in examples]
        if self.mode == "predict":
            batch["prompts"] = [e.prompt for e in examples]
        return batch

    def _full_sequences(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad([e.prompt_ids + e.response_ids for e in examples], self.pad_id)
        # Labels come from lengths, not ids: the pad id may equal EOS, and the final EOS must be learned.
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, e in enumerate(examples):
            start = len(e.prompt_ids)
            labels[row, start : start + len(e.response_ids)] = torch.tensor(e.response_ids, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
