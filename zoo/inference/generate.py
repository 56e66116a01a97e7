"""Prompts in, greedy answers out: the one way tools and evaluation generate.

The generation settings live in :func:`zoo.evaluation.greedy_config`; this module adds
the batch encoding (left padding, so every row continues at the end) and the prompt
template an adapter was trained with (:mod:`datamodules.prompts` names are recorded in
the adapter's ``info["prompt"]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.evaluation import greedy_config


def pick_device(device: str) -> torch.device:
    """``auto`` → the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def encode_prompts(
    tokenizer: Any, prompts: list[str], chat: bool, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Tokenize prompts as one left-padded batch (so generation continues every row at the end).

    Args:
        tokenizer: the base model's tokenizer.
        prompts: the texts (already in a template, or plain).
        chat: wrap each prompt as a user message with the tokenizer's chat template.
        device: where the tensors go.
    """
    if chat:
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    finally:
        tokenizer.padding_side = side
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def generate_greedy(
    model: nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], max_new_tokens: int, logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy decoding with a KV cache (``generate``, :func:`zoo.evaluation.greedy_config`).

    Returns:
        ``(new tokens [B, N], logits [B, N, vocab] or None)``; rows that stop early are
        padded with the pad token.
    """
    config = greedy_config(tokenizer, max_new_tokens)
    config.return_dict_in_generate = True
    config.output_logits = logits
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config)
    new = out.sequences[:, batch["input_ids"].shape[1] :]
    return new, (torch.stack(out.logits, dim=1) if logits else None)
