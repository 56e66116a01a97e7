"""Prompts in, greedy answers out: the one way tools generate.

The generation settings live in :func:`zoo.evaluation.greedy_config`; this module adds
the batch encoding (left padding, so every row continues at the end) and the prompt
template: ``fit`` records the data module's ``prompt_style`` (and ``system_prompt``, when
set) in the adapter (``info``, :func:`prompt_info`), so a tool can wrap a request in the
template its adapter was trained with (:func:`adapter_template`, :func:`adapter_system_prompt`):
the LLM-Adapters (Alpaca) template or the tokenizer's chat template (:mod:`datamodules.prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from zoo.adapter import Adapter
from zoo.evaluation import greedy_config

Template = Literal["plain", "chat", "alpaca"]
"""How a request's text becomes the prompt: as it is, in the tokenizer's chat template, or in
the LLM-Adapters (Alpaca) template."""


def prompt_info(datamodule: Any) -> dict[str, Any]:
    """What an adapter records of its training prompts: the data module's ``prompt_style`` and
    ``system_prompt`` (when it sets one)."""
    style = getattr(datamodule, "prompt_style", None)
    if not isinstance(style, str):
        return {}
    system = getattr(datamodule, "system_prompt", None)
    return {"prompt_style": style, **({"system_prompt": system} if isinstance(system, str) else {})}


def adapter_template(adapter: Adapter | None) -> Template:
    """The template ``adapter`` was trained with (``plain`` for the base model or an adapter
    that records none, such as one written before ftzoo recorded it)."""
    style = adapter.info.get("prompt_style") if adapter is not None else None
    return style if style in ("chat", "alpaca") else "plain"


def adapter_system_prompt(adapter: Adapter | None) -> str | None:
    """The system prompt ``adapter`` was trained with, if its chat prompts set one."""
    system = adapter.info.get("system_prompt") if adapter is not None else None
    return system if isinstance(system, str) and adapter_template(adapter) == "chat" else None


def render(tokenizer: Any, prompt: str, template: Template, system_prompt: str | None = None) -> tuple[str, bool]:
    """``(text, add_special_tokens)`` of one prompt in ``template`` (``system_prompt``: "chat" only)."""
    if template == "plain":
        return prompt, True
    from datamodules.prompts import get_template  # the templates the data modules train with

    chosen = get_template(template, tokenizer, system_prompt if template == "chat" else None)
    return chosen.render(prompt, ""), chosen.add_special_tokens


def pick_device(device: str) -> torch.device:
    """``auto`` → the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def prompt_ids(
    tokenizer: Any,
    prompts: list[str],
    template: Template | Sequence[Template] | bool,
    system_prompts: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Each prompt in its template, tokenized (no padding): what a batch is built from.

    ``template`` is one template for every prompt or one per prompt; ``True`` is
    ``"chat"`` and ``False`` ``"plain"``. ``system_prompts``: one per prompt, for its
    "chat" template (``None``: the template's default).
    """
    if isinstance(template, bool):
        template = "chat" if template else "plain"
    templates = [template] * len(prompts) if isinstance(template, str) else list(template)
    systems = list(system_prompts) if system_prompts is not None else [None] * len(prompts)
    rows = [render(tokenizer, p, t, s) for p, t, s in zip(prompts, templates, systems)]
    return [tokenizer(text, add_special_tokens=special)["input_ids"] for text, special in rows]


def encode_prompts(
    tokenizer: Any,
    prompts: list[str],
    template: Template | Sequence[Template] | bool,
    device: torch.device | str,
    system_prompts: Sequence[str | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize prompts as one left-padded batch (so generation continues every row at the end).

    Args:
        tokenizer: the base model's tokenizer.
        prompts: the request texts.
        template: one template for every prompt, or one per prompt (requests of different
            adapters); ``True`` is ``"chat"`` and ``False`` ``"plain"``.
        device: where the tensors go.
        system_prompts: one per prompt, for its "chat" template (``None``: the template's default).
    """
    ids = prompt_ids(tokenizer, prompts, template, system_prompts)
    width = max(map(len, ids), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], dtype=torch.long)  # [B, T], left-padded
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], dtype=torch.long)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


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
