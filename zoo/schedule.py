"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

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


def apply_configured_settings(
    optimizer: torch.optim.Optimizer, configured: torch.optim.Optimizer, scheduler: Any
) -> list[str]:
    """Give a resumed optimizer this run's settings instead of the checkpoint's.

    Resuming restores the optimizer's and the ``LambdaLR`` scheduler's state, which holds the
    learning rate, weight decay, betas ... the checkpoint was trained with; advice such as
    "lower the learning rate" must work on resume. The moments and the step count stay the
    checkpoint's; the learning rate of the current step is the new peak times the schedule's
    multiplier there.

    Args:
        optimizer: the optimizer as restored from the checkpoint.
        configured: a fresh optimizer over the same groups, built from this run's config.
        scheduler: the restored scheduler (its ``base_lrs`` are the peak learning rates).

    Returns:
        The settings that changed, as ``"lr 0.002 -> 0.0001"``.
    """
    changed: dict[str, str] = {}
    for group, new in zip(optimizer.param_groups, configured.param_groups, strict=True):
        for key, value in new.items():
            if key not in ("params", "lr", "initial_lr") and group.get(key) != value:
                changed.setdefault(key, f"{key} {group.get(key)} -> {value}")
                group[key] = value
    peaks = [group["lr"] for group in configured.param_groups]
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and list(scheduler.base_lrs) != peaks:
        changed["lr"] = f"lr {_one(scheduler.base_lrs)} -> {_one(peaks)}"
        scheduler.base_lrs = peaks
        for group, peak, multiplier in zip(optimizer.param_groups, peaks, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = peak
            group["lr"] = peak * multiplier(scheduler.last_epoch)
    return list(changed.values())


def _one(values: list[float]) -> Any:
    return values[0] if len(set(values)) == 1 else values
