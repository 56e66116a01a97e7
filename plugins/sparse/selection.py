"""Which entries of each target weight train: small strategy classes chosen by name.

Every strategy scores the entries of each target weight; the ``k = round(density ·
numel)`` highest scores of each matrix are kept (the same density in every matrix).

=========== ======================================= =============================
name        score                                   needs
=========== ======================================= =============================
random      uniform noise (seed, layer name)         nothing
weight      ``|W|``                                  the base weights
gradient    ``Σ_b |∂L_b/∂W|`` over calibration        a few training batches
            batches (no optimizer, no weight change)
=========== ======================================= =============================

Add a strategy by subclassing :class:`MaskStrategy` and listing it in :data:`STRATEGIES`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch
from torch import nn

from zoo import dequantized_weight, is_quantized_linear, weight_shape

Batches = Callable[[], Iterator[dict[str, torch.Tensor]]]


class MaskStrategy:
    """Scores the entries of target weights; higher scores train."""

    name: ClassVar[str] = ""

    def scores(
        self, model: nn.Module, targets: list[str], calibration_batches: Batches, seed: int
    ) -> dict[str, torch.Tensor]:
        """Score of every entry of each target's weight (a tensor of the weight's shape)."""
        raise NotImplementedError

    def choose(
        self, model: nn.Module, targets: list[str], density: float, calibration_batches: Batches, seed: int
    ) -> dict[str, torch.Tensor]:
        """Sorted flat indices of the top-``density`` entries of each target's weight."""
        chosen = {}
        for name, score in self.scores(model, targets, calibration_batches, seed).items():
            count = max(1, round(density * score.numel()))
            chosen[name] = score.reshape(-1).float().topk(count).indices.sort().values.cpu()
        return chosen


class RandomMask(MaskStrategy):
    """Uniformly random entries, reproducible from the seed and the layer's name."""

    name = "random"

    def scores(self, model, targets, calibration_batches, seed):
        scores = {}
        for name in targets:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            scores[name] = torch.rand(weight_shape(model.get_submodule(name)), generator=generator)
        return scores


class WeightMagnitudeMask(MaskStrategy):
    """The largest-magnitude entries of the base weight."""

    name = "weight"

    def scores(self, model, targets, calibration_batches, seed):
        return {name: dequantized_weight(model.get_submodule(name)).abs() for name in targets}


class GradientMagnitudeMask(MaskStrategy):
    """The entries with the largest accumulated gradient magnitude on calibration batches.

    Each target weight gets ``requires_grad`` for the duration; a post-accumulate hook adds
    ``|grad|`` (float32) to its score and drops the gradient at once, so no full set of
    dense gradients is ever held, and no weight changes.
    """

    name = "gradient"

    def scores(self, model, targets, calibration_batches, seed):
        quantized = [name for name in targets if is_quantized_linear(model.get_submodule(name))]
        if quantized:
            raise ValueError(
                f"sparse strategy 'gradient' needs weight gradients, which quantized weights ({quantized[0]}, ...) do "
                "not take; on a quantized base use strategy random or weight"
            )
        weights = {name: model.get_submodule(name).weight for name in targets}
        scores = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
        for weight in weights.values():
            weight.requires_grad_(True)
        handles = [w.register_post_accumulate_grad_hook(_accumulator(scores[n])) for n, w in weights.items()]
        try:
            seen = 0
            with torch.enable_grad():
                for batch in calibration_batches():
                    model(**batch).loss.backward()
                    seen += 1
            if not seen:
                raise ValueError("gradient mask selection needs calibration batches; got none")
        finally:
            for handle in handles:
                handle.remove()
            for weight in weights.values():
                weight.requires_grad_(False)
                weight.grad = None
        return scores


def _accumulator(score: torch.Tensor) -> Callable[[torch.Tensor], None]:
    def accumulate(param: torch.Tensor) -> None:
        score.add_(param.grad.detach().abs().float())
        param.grad = None

    return accumulate


STRATEGIES: dict[str, type[MaskStrategy]] = {
    cls.name: cls for cls in (RandomMask, WeightMagnitudeMask, GradientMagnitudeMask)
}
