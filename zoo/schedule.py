"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

Decay = Literal["constant", "linear", "cosine"]


def warmup_decay(warmup_steps: int, total_steps: int, decay: Decay, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each optimizer step, for ``LambdaLR``.

    Args:
        warmup_steps: steps of linear increase from ``1/(warmup_steps+1)`` of the peak.
        total_steps: steps of the whole run; decay ends there at ``min_ratio``.
        decay: shape of the decay after warm-up.
        min_ratio: final learning rate as a fraction of the peak.
    """
    if decay not in ("constant", "linear", "cosine"):
        raise ValueError(f"lr decay must be 'constant', 'linear' or 'cosine', got {decay!r}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_ratio + (1.0 - min_ratio) * shape

    return multiplier


def parameter_groups(named: list[tuple[str, Any]], shapes: dict[str, Any]) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on matrices only, none on 1-D tensors (norms, biases).

    Args:
        named: ``(name, parameter)`` pairs the optimizer updates.
        shapes: each name's shape as the method built it (FSDP holds flat 1-D shards).
    """
    decay = [p for name, p in named if len(shapes[name]) >= 2]
    no_decay = [p for name, p in named if len(shapes[name]) < 2]
    return [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
