"""Greedy answers to tokenized prompts: the one generation path of ftzoo.

``lightning validate/test/predict`` (:class:`zoo.task_accuracy.EvaluationSteps`),
``tools.evaluate``, ``tools.switch`` and the server all decode with
:class:`zoo.inference.ContinuousBatcher`: :func:`greedy_answers` submits the prompts as
greedy requests to a batcher over the model (a plain or training-rewritten model, or a
:class:`zoo.inference.MixedAdapterModel`) and collects the answers, and the server drives
the same batcher's steps itself. Why the batcher rather than Hugging Face ``generate``:

* one decoding step for everything: what the server answers is by construction what
  ``lightning test`` scored, with the same positions, masks, cache and stopping rules;
* a row's tokens depend on its own prompt only (positions counted per row, padding masked,
  sliding windows per row: :mod:`zoo.inference.kv_cache`), so ``test``, ``predict`` and
  ``tools.evaluate`` need no special batching to agree; in float32 the answers are those of
  ``generate`` on each prompt alone, whatever the batch (a test holds it to that). Floating
  point is not associative: in bf16 a batch of other shapes can round a logit differently
  and, rarely, flip a near-tie, so runs that must match answer for answer use the same
  batches (``predict`` and ``test`` share the data module's);
* a finished row leaves the batch at once instead of decoding padding until the longest
  answer of its batch ends, and the prompts of a batch are prefilled together.

Under FSDP the decoder layers gather their weights in every forward pass, a collective every
rank must join: the ranks then decode in lockstep, as ``generate(synced_gpus=True)`` does (all
of a rank's prompts are admitted at once, so each step is one forward pass, and a rank that
has finished runs a one-token pass until every rank has).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from zoo.inference.batching import Completion, ContinuousBatcher, GenerationRequest
from zoo.inference.mixed import MixedAdapterModel


def greedy_answers(
    model: nn.Module | MixedAdapterModel,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 32,
    adapters: Sequence[str | None] | None = None,
    description: str | None = None,
) -> list[str]:
    """Greedy answers (special tokens skipped) to tokenized prompts, in the prompts' order.

    Args:
        model: the model (in eval mode while it answers; its mode is restored), or a
            :class:`MixedAdapterModel` with adapters loaded.
        tokenizer: its tokenizer (EOS, padding, text).
        prompts: each prompt's token ids, in its template.
        max_new_tokens: the longest answer.
        batch_size: prompts decoded together at most; longest prompts first, and a finished
            answer's place goes to the next prompt.
        adapters: with a :class:`MixedAdapterModel`, each prompt's adapter (``None``: the base).
        description: show a progress bar (answers done) with this label.
    """
    if adapters is not None and len(adapters) != len(prompts):
        raise ValueError(f"{len(adapters)} adapters for {len(prompts)} prompts")
    names = list(adapters) if adapters is not None else [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # rows of similar length: little padding
    inner = model.model if isinstance(model, MixedAdapterModel) else model
    synced = _fsdp_ranks(inner)
    batcher = ContinuousBatcher(model, tokenizer, max(len(prompts), 1) if synced else batch_size)
    for i in order:
        batcher.submit(i, GenerationRequest(list(prompts[i]), names[i], max_new_tokens))
    done: dict[Hashable, Completion] = {}
    was_training = inner.training
    inner.eval()  # no dropout in an answer
    try:
        with tqdm(total=len(prompts), desc=description, unit="answer", disable=description is None, leave=False) as bar:
            while _any_rank_busy(batcher, synced):
                if batcher.busy:
                    for update in batcher.step():
                        if update.completion is not None:
                            done[update.uid] = update.completion
                            bar.update()
                else:
                    _idle_pass(batcher)
    finally:
        inner.train(was_training)
    return [done[i].text for i in range(len(prompts))]


def _fsdp_ranks(model: nn.Module) -> bool:
    """Whether forward passes are collectives of several ranks (FSDP-sharded layers)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules())


def _any_rank_busy(batcher: ContinuousBatcher, synced: bool) -> bool:
    if not synced:
        return batcher.busy
    busy = torch.tensor([int(batcher.busy)], device=batcher.device)
    dist.all_reduce(busy, op=dist.ReduceOp.MAX)
    return bool(busy.item())


def _idle_pass(batcher: ContinuousBatcher) -> None:
    """A one-token forward pass whose result is dropped: this rank's share of the others' step."""
    with torch.no_grad():
        batcher.model(input_ids=torch.full((1, 1), batcher.pad, device=batcher.device), use_cache=False)
