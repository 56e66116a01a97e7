"""Rows in and out of a batch's KV cache, so that requests can join and leave between steps.

The batch's cache is a transformers ``DynamicCache``: per layer, keys and values
``[B, heads, T, head_dim]``, and beside it the attention mask ``[B, T]`` (1: a real token).
Rows are left-padded, so every row's next token goes at the same column ``T``::

    row 0   . . k k k k k      (. : padding, masked out)
    row 1   k k k k k k k
    row 2   . . . . k k k

* :func:`join` stacks two caches, padding the shorter on the left;
* :func:`keep_rows` drops the rows of finished requests;
* :func:`trim_padding` cuts columns that are padding in every row that is left.

Since every row is as wide as the longest, the cache of ``B`` rows takes
``B × longest × bytes_per_token`` bytes: what :class:`zoo.inference.ContinuousBatcher`
budgets with ``max_batch_tokens``.

The batcher keeps every layer's cache whole (:func:`empty_cache`: ``DynamicLayer`` only),
sliding-window layers included (Mistral, Gemma, Qwen2 with ``use_sliding_window``):
transformers' sliding-window cache layer drops columns as they leave the window, which the
operations above cannot line up across caches of different lengths. The window is applied by
the model's mask instead, by *column* (``column > query column - window``); every row's
tokens are contiguous at the right (padding only on the left), so a row's column differences
are its position differences, and each row sees exactly its own last ``window`` tokens.
Keeping all columns costs memory beyond the window only, which the budget
(``max_batch_tokens``) counts anyway. Layers of another kind (chunked
or linear attention) are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, get_layer_types_and_kwargs

SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")
"""Attention layers whose cache a whole ``DynamicLayer`` holds (see the module docstring)."""


class UnsupportedCacheError(TypeError):
    """The model's KV cache has layers that rows cannot be moved in and out of."""


def bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in every layer (keys and values)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.finfo(dtype).bits // 8


def check_supported(config: Any) -> None:
    """Refuse a model with attention layers of another kind than full and sliding-window.

    Raises:
        UnsupportedCacheError: naming the kinds (chunked attention's windows start at fixed
            columns, which differ per row; linear attention keeps no per-token cache).
    """
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    others = sorted(set(layer_types) - set(SUPPORTED_LAYER_TYPES))
    if others:
        raise UnsupportedCacheError(
            f"continuous batching needs full-attention or sliding-window layers; this model has {', '.join(others)} "
            "layers"
        )


def empty_cache() -> DynamicCache:
    """A cache whose layers keep every column (``DynamicLayer``, made as the model fills them),
    whatever the model's config says: what a prefill starts from."""
    return DynamicCache()


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise UnsupportedCacheError(
                f"the batch's cache has a {type(layer).__name__}; the batcher keeps whole DynamicLayers only "
                "(does the model ignore the cache it is given?)"
            )
    return layers


def join(
    cache: DynamicCache, mask: torch.Tensor, other: DynamicCache, other_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """``cache``'s rows, then ``other``'s, as one cache (in place in ``cache``) and its mask."""
    width = max(mask.shape[1], other_mask.shape[1])
    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        mine.keys = torch.cat([pad_left(mine.keys, width), pad_left(theirs.keys, width)])
        mine.values = torch.cat([pad_left(mine.values, width), pad_left(theirs.values, width)])
    masks = [F.pad(m, (width - m.shape[1], 0)) for m in (mask, other_mask)]
    return cache, torch.cat(masks)


def pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """Keys or values with padding columns on the left up to ``width``."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))  # [B, H, T, D] → [B, H, width, D]


def keep_rows(cache: DynamicCache, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Keep only ``rows`` (indices) of the cache, in place; return their mask."""
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
    return mask.index_select(0, rows)


def trim_padding(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Cut the leading columns that no row uses, in place; return the mask."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else mask.shape[1]
    if first == 0:
        return mask
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    return mask[:, first:]
