"""Hugging Face ``generate``, greedy with the KV cache: the reference ftzoo's one generation path
(:func:`zoo.inference.greedy_answers`, :class:`zoo.inference.ContinuousBatcher`) is tested against.

ftzoo itself never calls ``generate`` (the serving benchmark times it as peft's peer); the tests
keep it because it is the decoding every Hugging Face user knows, written independently of ours.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig


def hf_greedy(
    model: nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], max_new_tokens: int, logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``generate`` on a left-padded batch (:func:`zoo.inference.encode_prompts`), greedy, stopping at EOS.

    Returns:
        ``(new tokens [B, N], logits [B, N, vocab] or None)``; rows that stop early are
        padded with the pad token.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id
    )
    config.return_dict_in_generate = True
    config.output_logits = logits
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config)
    new = out.sequences[:, batch["input_ids"].shape[1] :]
    return new, (torch.stack(out.logits, dim=1) if logits else None)
