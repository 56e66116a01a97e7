"""Scoring a model on held-out items: accuracy with intervals, paired tests.

The answers come from :func:`zoo.inference.greedy_answers` (the one generation path).

Accuracy on ``n`` items is a binomial proportion, so every accuracy comes with its 95% Wilson
score interval (sound at 0% and 100% and for small ``n``, unlike the normal approximation). Two
models scored on the *same* items are compared with McNemar's exact test: only the items one
gets right and the other wrong carry information, and under "no difference" each such item is a
fair coin. A difference whose p-value is above 0.05 is a tie.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from zoo.loss import IGNORE_INDEX, response_loss

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""
SIGNIFICANCE = 0.05


class HasTask(Protocol):
    """An evaluated item: anything with the name of its task."""

    task: str


ItemT = TypeVar("ItemT", bound=HasTask)


@dataclass(frozen=True)
class Score:
    """Accuracy of one model on one task, with its 95% Wilson interval."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy, "low": low, "high": high}


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (``(nan, nan)`` for no items)."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def macro_average(scores: Sequence[Score], z: float = Z95) -> dict[str, float]:
    """The unweighted mean accuracy over tasks (as the paper tables report it), with a 95%
    normal interval from the tasks' independent binomial variances."""
    if not scores:
        return {"accuracy": float("nan"), "low": float("nan"), "high": float("nan")}
    k = len(scores)
    mean = sum(s.accuracy for s in scores) / k
    variance = sum(s.accuracy * (1 - s.accuracy) / s.total for s in scores) / (k * k)
    half = z * math.sqrt(variance)
    return {"accuracy": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half)}


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two models on the same items.

    Attributes:
        only_first: items the first model gets right and the second wrong.
        only_second: items the second gets right and the first wrong.
        p_value: two-sided exact binomial p-value of the discordant items.
    """

    only_first: int
    only_second: int
    p_value: float

    @property
    def verdict(self) -> str:
        """``"first"``, ``"second"`` or ``"tie"`` (no significant difference at 5%)."""
        if self.p_value >= SIGNIFICANCE or self.only_first == self.only_second:
            return "tie"
        return "first" if self.only_first > self.only_second else "second"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired outcomes (item ``i`` of both lists is the same item).

    Raises:
        ValueError: the lists differ in length.
    """
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} and {len(second)}")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n  # exact: Python integers
    return McNemar(b, c, min(1.0, 2 * tail))


Z80 = 0.8416212335729143
"""The standard normal quantile of 0.8: 80% power."""


def minimum_detectable_difference(items: int, discordant: float, z_alpha: float = Z95, z_power: float = Z80) -> float:
    """The smallest difference in accuracy a paired test on ``items`` items detects with 95%
    confidence and 80% power, when a fraction ``discordant`` of items is right for one model and
    wrong for the other (Connor 1987's sample size for McNemar's test, solved for the difference).

    With few discordant items even a difference as large as ``discordant`` itself (every
    disagreement one way) may be out of reach; then ``discordant`` is returned, the most two
    such models could differ by.

    Raises:
        ValueError: for no items or a fraction outside (0, 1].
    """
    if items <= 0 or not 0 < discordant <= 1:
        raise ValueError(f"need items > 0 and 0 < discordant <= 1, got {items} and {discordant}")

    def needed(delta: float) -> float:  # items the test needs to detect ``delta``
        return (z_alpha * math.sqrt(discordant) + z_power * math.sqrt(discordant - delta * delta)) ** 2 / delta**2

    low, high = 0.0, discordant
    if needed(high) > items:
        return discordant
    for _ in range(100):  # needed() falls as delta grows: bisect for needed(delta) == items
        middle = (low + high) / 2
        low, high = (middle, high) if needed(middle) > items else (low, middle)
    return high


def mean_and_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``nan`` for fewer than two values) over seeds."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def sample_items(examples: list[ItemT], max_records: int | None, seed: int) -> list[ItemT]:
    """At most ``max_records`` examples per task: a seeded sample kept in file order, so every
    entry (and every rerun) is scored on the same items."""
    if max_records is None:
        return examples
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_task[example.task].append(i)
    keep: set[int] = set()
    for task, indices in by_task.items():
        keep.update(indices if len(indices) <= max_records else random.Random(f"{seed}:{task}").sample(indices, max_records))
    return [e for i, e in enumerate(examples) if i in keep]


@torch.inference_mode()
def mean_response_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean cross-entropy per response token over ``batches`` (``labels`` is -100 elsewhere):
    every token weighs the same, whatever batch it is in."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            batch = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")}
            total += response_loss(model, batch, reduction="sum").item()
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / tokens if tokens else float("nan")
