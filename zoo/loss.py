"""The fine-tuning loss: mean cross-entropy of the response tokens.

Only the positions that predict a labelled token need logits. The LM head and the softmax
over the vocabulary cost as much per token as several transformer blocks (SmolLM2-135M:
49,152 × 576 against ~4 M multiply-adds per block), and prompt tokens, most of a batch,
need neither; so the model is asked for those logits alone (transformers' boolean
``logits_to_keep``). The value is that of transformers' own ``labels=`` loss.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

IGNORE_INDEX = -100
"""Label of a token that is not scored (prompt, padding)."""


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` booleans: position ``t`` predicts a labelled token ``t + 1``."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the labelled tokens of ``batch`` (``input_ids``, ``attention_mask``,
    ``labels``): their mean (as ``labels=`` gives it), or their sum."""
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if not keeps_selected_logits(model):
        logits = model(**inputs).logits[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)
    keep = predicting_positions(labels)
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.dim() != 2:
        raise RuntimeError(
            f"{type(model).__name__} took a boolean logits_to_keep but returned logits of shape {tuple(logits.shape)}, "
            "not (kept positions, vocabulary)"
        )
    return F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction=reduction)


def keeps_selected_logits(model: nn.Module) -> bool:
    """Whether the transformers model under ``model`` (unwrapped from peft) takes ``logits_to_keep``."""
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(inner))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters
