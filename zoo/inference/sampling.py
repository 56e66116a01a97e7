"""The next token of each row: greedy, or sampled with its own temperature, top-p and seed.

Rows of one batch belong to different requests, so each row carries its own settings and
its own ``torch.Generator`` (a request with a ``seed`` gets the same answer whatever else
shares its batch). Temperature 0 is greedy: ``argmax``, what
:func:`zoo.inference.greedy_answers` decodes for evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens."""

    temperature: float = 0.0
    """0: greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Sample from the smallest set of tokens whose probabilities sum to at least this."""
    seed: int | None = None
    """Seed of the request's generator; ``None``: a random one."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """The request's own random generator (``None`` when greedy)."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def next_tokens(
    logits: torch.Tensor, settings: Sequence[Sampling], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row.

    Args:
        logits: ``[B, vocab]``, the last position of each row.
        settings: each row's sampling.
        generators: each row's generator (``None`` for greedy rows).

    Returns:
        ``[B]`` token ids (on ``logits.device``).
    """
    tokens = logits.argmax(dim=-1)
    for row, (setting, generator) in enumerate(zip(settings, generators)):
        if not setting.greedy:
            tokens[row] = sample(logits[row], setting.temperature, setting.top_p, generator)
    return tokens


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """A token drawn from ``softmax(logits / temperature)`` restricted to the top-``p`` nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= top_p] = 0.0  # the first token is always kept
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]
