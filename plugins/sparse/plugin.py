"""Sparse masks as an ftzoo method: unstructured sparse fine-tuning of chosen weights.

A fraction ``density`` of the entries of each target weight trains; the rest stays the
base's. Which entries is decided once, before training, by a strategy of
:mod:`plugins.sparse.selection`; the rewritten layers (:mod:`plugins.sparse.layer`) add
the trained values to the frozen weight on the fly. Loading an adapter *fuses* it (the core
default, through this method's cheap index-wise fuse): a fused sparse update costs nothing
at inference, and unfusing restores the k original entries exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from plugins.sparse import model as masks
from plugins.sparse.indices import encode
from plugins.sparse.selection import STRATEGIES
from zoo import Adapter, MergeOptions, Method, find_modules, hookimpl

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class SparseMask(Method):
    """Train a random, weight- or gradient-chosen subset of the entries of linear weights.

    Args:
        density: fraction of the entries of each target weight that train (0 < density ≤ 1).
        target_modules: linear layers to adapt: names matched at the end of module names or
            one regular expression over full names (PEFT's rule); default every projection.
        strategy: how entries are chosen: ``"random"``, ``"weight"`` (largest ``|W|``) or
            ``"gradient"`` (largest accumulated ``|∂L/∂W|`` on the calibration batches).
        grad_mode: how the values' gradient is computed: ``"dense"`` (one GEMM, transient
            dense gradient; best on GPUs) or ``"sampled"`` (only the masked dot products).
    """

    name = "sparse"
    prefix = "mask_"

    def __init__(
        self,
        density: float = 0.01,
        target_modules: Sequence[str] | str = ALL_PROJECTIONS,
        strategy: Literal["random", "weight", "gradient"] = "gradient",
        grad_mode: Literal["dense", "sampled"] = "dense",
    ) -> None:
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        if grad_mode not in ("dense", "sampled"):
            raise ValueError(f"grad_mode must be 'dense' or 'sampled', got {grad_mode!r}")
        self.density = density
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.strategy = strategy
        self.grad_mode = grad_mode

    @hookimpl
    def ftzoo_select_parameters(self, model: nn.Module, calibration_batches: Any, seed: int) -> dict[str, Any]:
        targets = find_modules(model, self.target_modules)
        chosen = STRATEGIES[self.strategy]().choose(model, targets, self.density, calibration_batches, int(seed))
        return masks.make_selection(chosen, model, strategy=self.strategy, density=self.density, seed=int(seed))

    @hookimpl
    def ftzoo_quantized_base(self) -> bool:
        return True  # the masked values train beside the quantized weight

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: dict[str, Any]) -> None:
        masks.rewrite(model, masks.selected_indices(selection), self.grad_mode)

    @hookimpl
    def ftzoo_extract_adapter(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return masks.extract(model)

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        return masks.deltas(model, adapter.tensors)

    @hookimpl
    def ftzoo_fuse_adapter(self, model: nn.Module, adapter: Adapter, scale: float) -> Any:
        return masks.fuse(model, adapter.tensors, scale)

    @hookimpl
    def ftzoo_unfuse_adapter(self, model: nn.Module, undo: Any) -> bool:
        masks.unfuse(model, undo)
        return True

    @hookimpl
    def ftzoo_serving_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, nn.Module]:
        modules = {}
        for name, indices, values, weight in masks.fitting_targets(model, adapter.tensors):
            half = weight.dtype in (torch.float16, torch.bfloat16)  # CPU sparse products lack them
            values = values.to(device=weight.device, dtype=torch.float32 if half else weight.dtype)
            modules[name] = masks.SparseDelta(indices.to(weight.device), values, tuple(weight.shape))
        return modules

    @hookimpl
    def ftzoo_merge_adapters(
        self, adapters: list[Adapter], weights: list[float], options: MergeOptions
    ) -> Adapter | None:
        """Linear merges (``how`` = sum, task_arithmetic, average) on the union of the masks,
        exactly as :mod:`zoo.merging.formulas` computes them on dense deltas; other formulas
        decline (``None``: the merge tool combines dense deltas)."""
        how = options.how
        if how not in ("sum", "task_arithmetic", "average"):
            return None
        scale = options.scale if how == "task_arithmetic" else 1.0
        per_entry = options.average_over if how == "average" else None
        first = adapters[0]
        tensors = masks.merge([a.tensors for a in adapters], [scale * w for w in weights], per_entry)
        targets = {
            name: {"shape": first.selection["targets"][name]["shape"], "count": len(idx), "indices": encode(idx)}
            for name, (idx, _) in masks.adapter_targets(tensors).items()
        }
        selection = {**first.selection, "strategy": "merged", "targets": targets}
        info = {"merged_from": [a.info for a in adapters], "weights": list(weights), "options": options.as_dict()}
        return Adapter(first.method, dict(first.config), selection, first.base, tensors, info)
