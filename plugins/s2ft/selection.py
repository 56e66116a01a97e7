"""Which heads and channels train: scoring strategies and the selection format.

A strategy gives every unit (query head of O, kv head of V, channel of up/gate/down) a
score; the selection keeps the ``k`` largest (or smallest) per role. Scores are L2 norms
over the unit's slice (``‖·‖`` below), the paper's S²FT-R/W/A/S/G variants:

================== ====  =========================================================
strategy           name  score of a unit
================== ====  =========================================================
random             R     uniform random (seeded)
weight             W     ‖W_unit‖: the unit's rows (V, up, gate) or columns (O, down)
activation         A     ‖X_unit‖ over the calibration tokens: the unit's input
                         features for O and down, its output features for V, up, gate
weight_activation  S     ‖W_unit‖ · ‖X_unit‖
gradient           G     ‖∂L/∂W_unit‖ over the calibration batches (√Σ_batches ‖g‖²)
================== ====  =========================================================

Padding tokens (``attention_mask == 0``) do not count in the activation norms. The
gradient strategy turns on ``requires_grad`` for the scored weights only while it runs;
each weight's gradient is reduced to per-unit norms the moment it is complete (a
post-accumulate-grad hook) and freed, so at most one block's gradient is alive at a time
and no optimizer state exists.

The selection (JSON-able, stored in checkpoints and adapters) lists, per trained
projection, its module and the selected units in the base model's ORIGINAL coordinates::

    {"format": "s2ft-selection", "version": 1, "projections": [
        {"layer": 0, "role": "o", "module": "model.layers.0.self_attn.o_proj", "dim": 1,
         "unit": "query_head", "unit_size": 64, "num_units": 9, "units": [2, 7]}, ...]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from zoo import dequantized_weight, layer_quantization

from plugins.s2ft.config import ROLES, Allocation, Budget, resolve_count
from plugins.s2ft.structures import Block

SELECTION_FORMAT = "s2ft-selection"
SELECTION_VERSION = 1

Batches = Callable[[], Iterator[dict[str, torch.Tensor]]]


@dataclass
class Target:
    """One projection of one block that may train, and the size of its units."""

    layer: int
    role: str
    module_name: str
    linear: nn.Module
    dim: int
    unit: str
    unit_size: int
    num_units: int

    @classmethod
    def of(cls, block: Block, role: str) -> Target:
        spec = ROLES[role]
        unit_size = block.head_dim if spec.unit != "channel" else 1
        num_units = {"query_head": block.num_heads, "kv_head": block.num_kv_heads, "channel": block.intermediate_size}
        return cls(
            block.index,
            role,
            block.module_name(spec.projection),
            block.linear(spec.projection),
            spec.dim,
            spec.unit,
            unit_size,
            num_units[spec.unit],
        )

    def unit_norms(self, tensor: torch.Tensor, feature_dim: int) -> torch.Tensor:
        """Squared L2 norm per unit of ``tensor``, whose ``feature_dim`` runs over this target's units."""
        t = tensor.detach().movedim(feature_dim, -1)
        t = t.reshape(-1, self.num_units, self.unit_size).to(_accumulation_dtype(t))  # [rest, units, unit_size]
        return t.pow(2).sum(dim=(0, 2))  # [units]


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------


class Strategy:
    """Scores every unit of every target (higher = more of what the strategy measures)."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    def scores(
        self, targets: Sequence[Target], model: nn.Module, batches: Batches, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """One ``[num_units]`` tensor per target."""
        raise NotImplementedError


class RandomStrategy(Strategy):
    """S²FT-R: uniform random scores, so the top-k is a uniform random subset."""

    name = "random"

    def scores(self, targets, model, batches, generator):
        return [torch.rand(t.num_units, generator=generator, dtype=torch.float64) for t in targets]


class WeightStrategy(Strategy):
    """S²FT-W: the norm of the unit's rows or columns."""

    name = "weight"

    def scores(self, targets, model, batches, generator):
        # a quantized base is scored on the weights it computes with (dequantized, one at a time)
        return [t.unit_norms(dequantized_weight(t.linear), feature_dim=t.dim).sqrt() for t in targets]


class ActivationStrategy(Strategy):
    """S²FT-A: the norm of the unit's activations on the calibration batches."""

    name = "activation"
    needs_data = True

    def scores(self, targets, model, batches, generator):
        sums = [torch.zeros(t.num_units, dtype=torch.float64) for t in targets]
        mask: list[torch.Tensor | None] = [None]

        def hook(i: int, target: Target) -> Callable:
            def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                feature = args[0] if target.dim == 1 else output  # [b, s, features]
                if mask[0] is not None:
                    feature = feature * mask[0].unsqueeze(-1).to(feature.dtype)  # zero the padding tokens
                sums[i] += target.unit_norms(feature, feature_dim=-1).double().cpu()

            return record

        handles = [t.linear.register_forward_hook(hook(i, t)) for i, t in enumerate(targets)]
        try:
            with torch.no_grad():
                for batch in _nonempty(batches):
                    mask[0] = batch.get("attention_mask")
                    model(**_model_inputs(batch))
        finally:
            for handle in handles:
                handle.remove()
        return [s.sqrt() for s in sums]


class WeightActivationStrategy(Strategy):
    """S²FT-S: weight norm times activation norm (Wanda-style)."""

    name = "weight_activation"
    needs_data = True

    def scores(self, targets, model, batches, generator):
        weights = WeightStrategy().scores(targets, model, batches, generator)
        activations = ActivationStrategy().scores(targets, model, batches, generator)
        return [w.double().cpu() * a for w, a in zip(weights, activations)]


class GradientStrategy(Strategy):
    """S²FT-G: the norm of the loss gradient of the unit's weights, over the calibration batches."""

    name = "gradient"
    needs_data = True

    def scores(self, targets, model, batches, generator):
        quantized = [t.module_name for t in targets if layer_quantization(t.linear) != "none"]
        if quantized:
            raise ValueError(
                f"S²FT strategy 'gradient' needs weight gradients, which quantized weights ({quantized[0]}, ...) do "
                "not take; on a quantized base use strategy random, weight, activation or weight_activation"
            )
        sums = [torch.zeros(t.num_units, dtype=torch.float64) for t in targets]
        weights = [t.linear.weight for t in targets]
        was = [w.requires_grad for w in weights]

        def hook(i: int, target: Target) -> Callable:
            def reduce(param: torch.Tensor) -> None:
                sums[i] += target.unit_norms(param.grad, feature_dim=target.dim).double().cpu()
                param.grad = None  # nothing accumulates: one weight's gradient alive at a time

            return reduce

        handles = []
        try:
            for i, (t, w) in enumerate(zip(targets, weights)):
                w.requires_grad_(True)
                handles.append(w.register_post_accumulate_grad_hook(hook(i, t)))
            for batch in _nonempty(batches):
                loss = model(**_model_inputs(batch)).loss
                loss.backward()
        finally:
            for handle in handles:
                handle.remove()
            for w, flag in zip(weights, was):
                w.requires_grad_(flag)
                w.grad = None
        return [s.sqrt() for s in sums]


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RandomStrategy, WeightStrategy, ActivationStrategy, WeightActivationStrategy, GradientStrategy)
}


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "labels")
    return {k: batch[k] for k in keys if k in batch} | {"use_cache": False}


def _nonempty(batches: Batches) -> Iterator[dict[str, torch.Tensor]]:
    count = 0
    for batch in batches():
        count += 1
        yield batch
    if count == 0:
        raise ValueError("S2FT: the calibration data yielded no batch to score activations or gradients on")


# ---------------------------------------------------------------------------------------
# choosing and the selection format
# ---------------------------------------------------------------------------------------


def choose(
    targets: Sequence[Target], scores: Sequence[torch.Tensor], budget: Budget, largest: bool, allocation: Allocation
) -> list[list[int]]:
    """The selected units of each target (sorted), for one role.

    Ties are broken by layer, then unit index, so the result is reproducible.

    Args:
        targets: the role's targets, in layer order.
        scores: one ``[num_units]`` score tensor per target.
        budget: fraction or count (per layer, or over all layers; see :mod:`plugins.s2ft.config`).
        largest: keep the highest scores (else the lowest).
        allocation: ``"global"`` ranks all layers' units together; ``"per_layer"`` each layer alone.
    """
    if not targets:
        return []
    role = targets[0].role
    if allocation == "per_layer":
        picked = []
        for t, s in zip(targets, scores):
            k = resolve_count(budget, t.num_units, f"{role} budget in layer {t.layer}")
            picked.append(sorted(_top(s.double().cpu(), k, largest).tolist()))
        return picked
    flat = torch.cat([s.double().cpu() for s in scores])  # [Σ units], layer-major
    k = resolve_count(budget, flat.numel(), f"{role} budget over {len(targets)} layers")
    offsets = torch.tensor([0] + [t.num_units for t in targets]).cumsum(0)
    picked = [[] for _ in targets]
    for flat_index in _top(flat, k, largest).tolist():
        i = int(torch.searchsorted(offsets, flat_index, right=True)) - 1
        picked[i].append(flat_index - int(offsets[i]))
    return [sorted(units) for units in picked]


def _top(scores: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    order = torch.argsort(-scores if largest else scores, stable=True)  # stable: ties by position
    return order[:k]


def make_selection(chosen: Sequence[tuple[Target, list[int]]]) -> dict[str, Any]:
    """The JSON-able selection for the chosen units (targets with no unit are left out)."""
    projections = [
        {
            "layer": t.layer,
            "role": t.role,
            "module": t.module_name,
            "dim": t.dim,
            "unit": t.unit,
            "unit_size": t.unit_size,
            "num_units": t.num_units,
            "units": [int(u) for u in units],
        }
        for t, units in sorted(chosen, key=lambda item: (item[0].layer, list(ROLES).index(item[0].role)))
        if units
    ]
    return {"format": SELECTION_FORMAT, "version": SELECTION_VERSION, "projections": projections}


def projections_of(selection: Any) -> list[dict[str, Any]]:
    """The projection entries of a selection, after checking its format.

    Raises:
        ValueError: not an S²FT selection of a version this code reads.
    """
    if not isinstance(selection, dict) or selection.get("format") != SELECTION_FORMAT:
        raise ValueError(
            f"not an S²FT selection (expected a dict with format {SELECTION_FORMAT!r}): {selection!r:.200}"
        )
    if selection.get("version") != SELECTION_VERSION:
        raise ValueError(
            f"S²FT selection version {selection.get('version')!r} is not supported (reads {SELECTION_VERSION})"
        )
    return selection["projections"]


def unit_count(selection: Any) -> dict[str, int]:
    """Number of selected units per role (for logs)."""
    counts = {role: 0 for role in ROLES}
    for entry in projections_of(selection):
        counts[entry["role"]] += len(entry["units"])
    return {role: n for role, n in counts.items() if n}
