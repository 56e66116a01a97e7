"""Prompt prefixes already prefilled, per adapter, reused by the prompts that start with them.

Requests to a server share long beginnings: the chat template's system prompt (24 of the 42
tokens of a short SmolLM2 chat request), a few-shot preamble, the context that
lm-evaluation-harness scores every choice after. A prefix's keys and values depend only on its
tokens and the adapter (a causal model: nothing after a token changes its cache), so they are
computed once and copied into the cache of every prompt that starts with them; only the rest of
the prompt is prefilled. This is vLLM's automatic prefix caching, by longest common prefix
rather than by hashed blocks:

* after a prompt is prefilled, :meth:`PrefixCache.add` keeps its keys and values, unless a kept
  entry of the same adapter shares at least ``min_tokens`` tokens with it: then that entry is cut
  to the shared part (two chat requests leave the system prompt and the template's start);
* :meth:`PrefixCache.longest` finds the entry sharing the most tokens with a new prompt (at most
  all but its last token, which must be run to give the first answer token's logits), and
  :meth:`PrefixCache.record` counts what a prefill took from it;
* entries are dropped least recently used first while they hold more than ``max_tokens`` tokens,
  so the memory they take is bounded like the batch's KV cache.

An adapter is keyed by its name and the version the model gave it when it was loaded, so a
reloaded adapter of the same name never reuses the old one's entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the keys and values of one row: ``[1, heads, tokens, head_dim]`` each."""


@dataclass
class PrefixEntry:
    """A prefilled prefix: its tokens, and its keys and values in every layer."""

    ids: tuple[int, ...]
    layers: Layers

    def sliced(self, tokens: int) -> Layers:
        """The keys and values of the first ``tokens`` tokens (views)."""
        return [(k[:, :, :tokens], v[:, :, :tokens]) for k, v in self.layers]


def shared_tokens(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share at their start."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


class PrefixCache:
    """Kept prefixes of prefilled prompts, per adapter (see the module docstring).

    Args:
        max_tokens: tokens the entries may hold together (each token costs the model's
            ``bytes_per_token``); the least recently used go first.
        min_tokens: the fewest shared tokens worth reusing (a shorter match is not a prefix
            worth a cache copy).
    """

    def __init__(self, max_tokens: int, min_tokens: int = 16) -> None:
        if max_tokens < 1 or min_tokens < 1:
            raise ValueError(f"max_tokens and min_tokens must be at least 1, got {max_tokens} and {min_tokens}")
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], PrefixEntry] = OrderedDict()  # least recent first
        self.tokens = 0
        """Tokens the entries hold."""
        self.hits = 0
        """Prompts that reused a prefix."""
        self.reused_tokens = 0
        """Prompt tokens those prompts did not prefill."""

    def __len__(self) -> int:
        return len(self._entries)

    def _best(self, adapter: Hashable, ids: Sequence[int]) -> tuple[int, tuple | None]:
        best, key = 0, None
        for k, entry in self._entries.items():
            if k[0] == adapter:
                shared = shared_tokens(entry.ids, ids)
                if shared > best:
                    best, key = shared, k
        return best, key

    def longest(self, adapter: Hashable, ids: Sequence[int]) -> tuple[int, PrefixEntry | None]:
        """The entry of ``adapter`` that shares the most of ``ids``' start, and how many tokens it
        may give (all but the prompt's last); ``(0, None)`` below ``min_tokens``."""
        shared, key = self._best(adapter, ids)
        shared = min(shared, len(ids) - 1)
        if key is None or shared < self.min_tokens:
            return 0, None
        self._entries.move_to_end(key)
        return shared, self._entries[key]

    def record(self, reused: int) -> None:
        """Count a prompt that took ``reused`` tokens from an entry (its prefill may take fewer
        than :meth:`longest` offered, to line up with the other prompts prefilled with it)."""
        self.hits += reused > 0
        self.reused_tokens += reused

    def add(self, adapter: Hashable, ids: Sequence[int], layers: Layers) -> None:
        """Keep a prefilled prompt's keys and values (``layers``, its ``len(ids)`` tokens; copied),
        or cut the entry it shares ``min_tokens`` or more with to the shared part."""
        if len(ids) > self.max_tokens:
            return
        shared, key = self._best(adapter, ids)
        if key is not None and shared >= self.min_tokens:
            entry = self._entries[key]
            if shared < len(entry.ids):  # keep the common part only
                del self._entries[key]
                self.tokens -= len(entry.ids)
                key = (adapter, entry.ids[:shared])
                if key not in self._entries:
                    self._entries[key] = PrefixEntry(key[1], [(k.clone(), v.clone()) for k, v in entry.sliced(shared)])
                    self.tokens += shared
            self._entries.move_to_end(key)
            return
        ids = tuple(ids)
        self._entries[(adapter, ids)] = PrefixEntry(ids, [(k.clone(), v.clone()) for k, v in layers])
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            _, dropped = self._entries.popitem(last=False)
            self.tokens -= len(dropped.ids)
