"""S²FT as an ftzoo method: select → co-permute → train slices → adapter.

Structured Sparse Fine-Tuning (Yang et al., NeurIPS 2024, "S²FT: Efficient, Scalable and
Generalizable LLM Fine-tuning by Structured Sparsity") selects a few attention heads and
FFN channels per block (:mod:`~plugins.s2ft.selection`), co-permutes the coupled weights so
that the selected ones form dense blocks (:mod:`~plugins.s2ft.permute`), and trains only
those blocks with a partial backward pass (:mod:`~plugins.s2ft.layers`). The update is
saved in the base model's coordinates (:mod:`~plugins.s2ft.adapter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from plugins.s2ft import adapter as s2ft_adapter
from plugins.s2ft.config import CONFIG_ARG, ROLES, Allocation, Budget, StrategyName, check_budget
from plugins.s2ft.layers import S2FTLinear
from plugins.s2ft.quantized import S2FTQuantizedLinear
from plugins.s2ft.permute import permute_, plan_attention, plan_channels, positions, runs
from plugins.s2ft.selection import STRATEGIES, Target, choose, make_selection, projections_of, unit_count
from plugins.s2ft.structures import Block, coupled_blocks
from zoo import (
    Adapter,
    MergeOptions,
    Method,
    UnsupportedWeightError,
    check_trainable_modules,
    hookimpl,
    is_quantized_linear,
    quantization_of,
)


class S2FT(Method):
    """Structured sparse fine-tuning: train selected heads and channels in place.

    Budgets are fractions of the units (float in [0, 1]) or counts (int); see
    :mod:`plugins.s2ft.config` for the units and the paper's recipes. The defaults are the
    paper's LLaMA-2 commonsense recipe (O heads 5.2 %, down channels 2 %).

    Args:
        o_heads: query heads whose O-projection columns train.
        v_heads: kv heads whose V-projection rows (and bias) train.
        down_channels: FFN channels whose down-projection columns train.
        up_channels: FFN channels whose up-projection rows (and bias) train.
        gate_channels: FFN channels whose gate-projection rows (and bias) train.
        strategy: how units are scored: ``random`` (S²FT-R), ``weight`` (W),
            ``activation`` (A), ``weight_activation`` (S) or ``gradient`` (G); the last
            three run on the module's calibration batches.
        largest: keep the highest-scoring units (else the lowest).
        allocation: ``global`` spreads each budget over all chosen layers by score (the
            official code's scheme); ``per_layer`` gives every layer the same budget.
        layers: indices of the blocks that may train (default: all).
        top_layers: instead of ``layers``, the top fraction of the blocks that may train
            (``0.5``: the upper half, at least one block). The backward pass stops at the
            lowest trained block, so the lower blocks need no backward pass (the quickstart's
            fit: 8.3 minutes for the upper half, 10.4 for all blocks).
        seed_offset: added to the run's seed for the random strategy (another draw with
            the same training seed).
    """

    name = "s2ft"
    prefix = "s2ft_"

    def __init__(
        self,
        o_heads: Budget = 0.052,
        v_heads: Budget = 0.0,
        down_channels: Budget = 0.02,
        up_channels: Budget = 0.0,
        gate_channels: Budget = 0.0,
        strategy: StrategyName = "random",
        largest: bool = True,
        allocation: Allocation = "global",
        layers: list[int] | None = None,
        top_layers: float | None = None,
        seed_offset: int = 0,
    ) -> None:
        self.o_heads = o_heads
        self.v_heads = v_heads
        self.down_channels = down_channels
        self.up_channels = up_channels
        self.gate_channels = gate_channels
        self.strategy = strategy
        self.largest = largest
        self.allocation = allocation
        self.layers = layers
        self.top_layers = top_layers
        self.seed_offset = seed_offset
        if top_layers is not None and not 0 < top_layers <= 1:
            raise ValueError(f"S2FT top_layers is a fraction of the blocks in (0, 1], got {top_layers}")
        if top_layers is not None and layers is not None:
            raise ValueError("S2FT takes either layers (block indices) or top_layers (a fraction), not both")
        for arg in CONFIG_ARG.values():
            check_budget(arg, getattr(self, arg))
        if strategy not in STRATEGIES:
            raise ValueError(f"S2FT strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        if allocation not in ("global", "per_layer"):
            raise ValueError(f"S2FT allocation must be 'global' or 'per_layer', got {allocation!r}")

    def budgets(self) -> dict[str, Budget]:
        """Role → budget, for the roles that train."""
        return {role: getattr(self, arg) for role, arg in CONFIG_ARG.items() if getattr(self, arg)}

    # ------------------------------------------------------------------ select

    @hookimpl
    def ftzoo_select_parameters(
        self, model: nn.Module, calibration_batches: Callable[[], Iterator[dict[str, torch.Tensor]]], seed: int
    ) -> dict[str, Any]:
        blocks = coupled_blocks(model)
        if self.layers is not None:
            unknown = sorted(set(self.layers) - {b.index for b in blocks})
            if unknown:
                raise ValueError(f"S2FT layers {unknown} do not exist (the model has {len(blocks)} blocks)")
            blocks = [b for b in blocks if b.index in set(self.layers)]
        if self.top_layers is not None:
            blocks = blocks[len(blocks) - max(1, math.ceil(self.top_layers * len(blocks))) :]
        budgets = self.budgets()
        if not budgets:
            raise ValueError("S2FT has nothing to train: every budget (o_heads, v_heads, ...) is 0")
        targets = {role: [Target.of(b, role) for b in blocks] for role in budgets}
        flat = [t for role in budgets for t in targets[role]]
        strategy = STRATEGIES[self.strategy]()
        if strategy.needs_data and calibration_batches is None:
            raise ValueError(
                f"S2FT strategy {self.strategy!r} scores units on calibration batches, but none were given"
            )
        generator = torch.Generator().manual_seed(seed + self.seed_offset)
        scores = strategy.scores(flat, model, calibration_batches, generator)
        chosen, start = [], 0
        for role, budget in budgets.items():
            role_scores = scores[start : start + len(targets[role])]
            start += len(targets[role])
            units = choose(targets[role], role_scores, budget, self.largest, self.allocation)
            chosen += list(zip(targets[role], units))
        selection = make_selection(chosen)
        rank_zero_info(f"S2FT ({self.strategy}, largest={self.largest}) selected {unit_count(selection)} units")
        return selection

    # ------------------------------------------------------------------ rewrite

    @hookimpl
    def ftzoo_quantized_base(self) -> bool:
        return True  # the selected units train as a float update beside the quantized weight

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: Any) -> None:
        rewrite(model, selection)

    @hookimpl
    def ftzoo_trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in model.named_parameters() if self.prefix in name and p.requires_grad]

    # ------------------------------------------------------------------ adapter

    @hookimpl
    def ftzoo_extract_adapter(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return s2ft_adapter.extract(model)

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        return s2ft_adapter.dense_deltas(model, adapter)

    @hookimpl
    def ftzoo_fuse_adapter(self, model: nn.Module, adapter: Adapter, scale: float) -> list:
        return s2ft_adapter.fuse(model, adapter, scale)

    @hookimpl
    def ftzoo_unfuse_adapter(self, model: nn.Module, undo: list) -> bool:
        s2ft_adapter.unfuse(model, undo)
        return True

    @hookimpl
    def ftzoo_merge_adapters(
        self, adapters: list[Adapter], weights: list[float], options: MergeOptions
    ) -> Adapter | None:
        return s2ft_adapter.merge(adapters, weights, options)


def rewrite(model: nn.Module, selection: Any) -> None:
    """Co-permute every block with a selection and make its selected slices trainable.

    Every block is checked before any is changed, so a refusal leaves the model as it was.

    Raises:
        ValueError: the selection does not fit the model (naming the layer and projection).
        UnsupportedWeightError: a projection to permute holds quantized or integer weights.
    """
    blocks = {b.index: b for b in coupled_blocks(model)}
    by_layer: dict[int, dict[str, dict[str, Any]]] = {}
    for entry in projections_of(selection):
        by_layer.setdefault(entry["layer"], {})[entry["role"]] = entry
    for layer, entries in sorted(by_layer.items()):
        if layer not in blocks:
            raise ValueError(f"the S²FT selection names layer {layer}; the model has {len(blocks)} blocks")
        check_block(blocks[layer], entries)
    if quantization_of(model) != "none":
        rewrite_quantized(model, blocks, by_layer)
        return
    touched = [blocks[layer].module_name(p) for layer, entries in by_layer.items() for p in _permuted(entries)]
    check_trainable_modules(model, touched, "S²FT")
    for layer, entries in sorted(by_layer.items()):
        rewrite_block(blocks[layer], entries)


def rewrite_quantized(model: nn.Module, blocks: dict[int, Block], by_layer: dict[int, dict[str, dict[str, Any]]]) -> None:
    """On a quantized base: no permutation; each selected projection gets a zero float update of
    its selected units beside the quantized weight (:mod:`plugins.s2ft.quantized`).

    Raises:
        UnsupportedWeightError: a selected projection is not a bitsandbytes layer (checked for
            every one before any is replaced).
    """
    chosen = [(blocks[layer], role, entry) for layer, entries in sorted(by_layer.items()) for role, entry in entries.items()]
    plain = [b.module_name(ROLES[role].projection) for b, role, _ in chosen if not is_quantized_linear(Target.of(b, role).linear)]
    if plain:
        raise UnsupportedWeightError(
            f"S²FT on a quantized base expects every selected projection quantized; {plain[:3]} are not "
            "(quantize the whole base with zoo.quantization.quantize). The model is left unchanged"
        )
    for block, role, entry in chosen:
        spec, target = ROLES[role], Target.of(block, role)
        dtype = getattr(target.linear, "compute_dtype", None) or _float_dtype(model)
        layer = S2FTQuantizedLinear(target.linear, spec.dim, entry["units"], target.unit_size, dtype)
        block.set_linear(spec.projection, layer)


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _permuted(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The projections a block's co-permutation changes (see :func:`_permute_block`)."""
    attention = ["q", "k", "v", "o"] if {"o", "v"} & set(entries) else []
    ffn = ["gate", "up", "down"] if {"gate", "up", "down"} & set(entries) else []
    return attention + ffn


def check_block(block: Block, entries: dict[str, dict[str, Any]]) -> None:
    """Refuse a block's selection that was made for other sizes, names units out of range,
    or targets a projection that is already rewritten.

    Raises:
        ValueError: naming the layer, projection and what does not fit.
    """
    for role, entry in entries.items():
        target = Target.of(block, role)
        if (entry["num_units"], entry["unit_size"]) != (target.num_units, target.unit_size):
            raise ValueError(
                f"the S²FT selection for layer {block.index} {role} projection was made for {entry['num_units']} "
                f"{entry['unit']}s of {entry['unit_size']}; this model has {target.num_units} of {target.unit_size}"
            )
        bad = [u for u in entry["units"] if not 0 <= u < target.num_units]
        if bad:
            raise ValueError(
                f"the S²FT selection for layer {block.index} {role} projection names {entry['unit']}s {bad[:5]}; "
                f"there are {target.num_units} (0 to {target.num_units - 1})"
            )
        if isinstance(target.linear, (S2FTLinear, S2FTQuantizedLinear)):
            raise RuntimeError(f"{target.module_name} is already rewritten by S²FT")


def rewrite_block(block: Block, entries: dict[str, dict[str, Any]]) -> None:
    """Co-permute one block and swap its selected projections for :class:`S2FTLinear`
    (checked first by :func:`check_block`)."""
    units = {role: entry["units"] for role, entry in entries.items()}
    orders = _permute_block(block, units)
    for role, entry in entries.items():
        spec, target = ROLES[role], Target.of(block, role)
        order = orders[target.unit]
        slot_units = [order[p] for p in positions(order, entry["units"])]
        layer = S2FTLinear(
            target.linear, spec.dim, runs(order, entry["units"], target.unit_size), slot_units, target.unit_size
        )
        block.set_linear(spec.projection, layer)


def _permute_block(block: Block, units: dict[str, list[int]]) -> dict[str, list[int]]:
    """Apply the co-permutation in place; return the order per unit kind."""
    orders = {}
    hd = block.head_dim
    if "o" in units or "v" in units:
        head_order, kv_order = plan_attention(
            block.num_heads, block.num_kv_heads, units.get("o", []), units.get("v", [])
        )
        for projection, order, dim in (
            ("q", head_order, 0),
            ("o", head_order, 1),
            ("k", kv_order, 0),
            ("v", kv_order, 0),
        ):
            _permute_linear(block.linear(projection), order, dim, hd)
        orders |= {"query_head": head_order, "kv_head": kv_order}
    ffn = {role: units[role] for role in ("gate", "up", "down") if role in units}
    if ffn:
        channel_order = plan_channels(block.intermediate_size, ffn)
        for projection, dim in (("gate", 0), ("up", 0), ("down", 1)):
            _permute_linear(block.linear(projection), channel_order, dim, 1)
        orders["channel"] = channel_order
    return orders


def _permute_linear(linear: nn.Module, order: list[int], dim: int, unit_size: int) -> None:
    permute_(linear.weight, order, dim, unit_size)
    if dim == 0 and linear.bias is not None:  # a bias entry belongs to its row
        permute_(linear.bias, order, 0, unit_size)
