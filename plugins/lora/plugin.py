"""LoRA and DoRA as ftzoo methods, backed by PEFT.

Selection: the names of the target linear layers plus the seed of their random init.
Rewrite: PEFT layers injected in place (module names unchanged, see :mod:`plugins.lora.model`).
Adapter: PEFT's tensors and key naming, written in ftzoo's format *and* in PEFT's
(:mod:`plugins.lora.peft_format`). Loading an adapter injects it, un-fused, under the name
``"default"``, so PEFT's mixed-adapter batches stay possible; fusing goes through
:func:`ftzoo_adapter_deltas` (PEFT's own merge math) and the core's exact unfuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from peft import LoraConfig
from torch import nn

from plugins.lora.config import LLM_ADAPTERS_TARGETS, check_init, mutates_base, peft_config, stored_rank
from plugins.lora.layer import DoraDelta, LowRankDelta, delta_weight
from plugins.lora.model import base_name, extract, inject, load, split_by_layer
from plugins.lora.peft_format import write_peft_files
from zoo import (
    Adapter,
    MergeOptions,
    Method,
    UnsupportedWeightError,
    check_trainable_modules,
    find_modules,
    hookimpl,
    is_quantized_linear,
    layer_quantization,
)


class LoRA(Method):
    """Low-rank adaptation (Hu et al., 2021): ``W x + s · B A x`` on each target layer.

    Defaults follow LLM-Adapters' commonsense/math recipes for LLaMA (r=32, alpha=64,
    dropout 0.05 on q, k, v, up and down projections), which DoRA also uses.

    Args:
        r: rank of the update ``B A``.
        alpha: scaling numerator: ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the LoRA branch's input while training.
        target_modules: linear layers to adapt: names matched at the end of module names
            (``q_proj``) or one regular expression over full names (PEFT's rule).
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)`` (Kalajdzievski, 2023).
        init_lora_weights: ``True`` (Kaiming A, zero B), ``"gaussian"``, ``"pissa"``,
            ``"pissa_niter_<n>"`` (fast SVD) or ``"olora"``; PiSSA/OLoRA adapters are saved
            converted to plain LoRA of rank 2r.
        use_dora: weight-decomposed LoRA (Liu et al., 2024); see :class:`DoRA`.
        bias: ``"none"``; ``"all"`` or ``"lora_only"`` also train biases (their names do not
            contain ``lora_``; the adapter stores the trained biases).
        adapter_dtype: ``"model"``: ``A``, ``B`` (and DoRA's magnitude) in the base's dtype, as
            raw peft with ``autocast_adapter_dtype=False`` (bf16 adapters on a bf16 base: the
            fewest bytes); ``"float32"``: float32 master values on a half-precision base
            (``get_peft_model``'s default), which costs 2× the adapter, gradient and AdamW
            bytes and a float32 copy of each adapted layer's input for backward
            (docs/benchmarks.md, rows ``lora_fp32`` and ``dora_fp32``).
    """

    name = "lora"
    prefix = "lora_"

    def __init__(
        self,
        r: int = 32,
        alpha: float = 64,
        dropout: float = 0.05,
        target_modules: Sequence[str] | str = LLM_ADAPTERS_TARGETS,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        use_dora: bool = False,
        bias: Literal["none", "all", "lora_only"] = "none",
        adapter_dtype: Literal["model", "float32"] = "model",
    ) -> None:
        check_init(init_lora_weights, use_dora)
        if adapter_dtype not in ("model", "float32"):
            raise ValueError(f"LoRA adapter_dtype must be 'model' or 'float32', got {adapter_dtype!r}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.use_rslora = use_rslora
        self.init_lora_weights = init_lora_weights
        self.use_dora = use_dora
        self.bias = bias
        self.adapter_dtype = adapter_dtype

    def options(self, adapter: Adapter | None = None) -> dict[str, Any]:
        """Every LoRA option (``use_dora`` included) of this method or of ``adapter``."""
        return {**self.config(), **(adapter.config if adapter else {}), "use_dora": self.use_dora}

    def _stored_config(self, adapter: Adapter) -> LoraConfig:
        # How an adapter's tensors were stored: its own rank (2r after PiSSA); the init is
        # overwritten by the tensors, so the cheapest one.
        options = self.options(adapter)
        rank = stored_rank(adapter.tensors)
        return peft_config(options, adapter.selection["targets"], rank=rank, init_lora_weights=True)

    # ------------------------------------------------------------------ select, rewrite, extract

    @hookimpl
    def ftzoo_select_parameters(self, model: nn.Module, seed: int) -> dict[str, Any]:
        return {"targets": find_modules(model, self.target_modules), "seed": int(seed)}

    @hookimpl
    def ftzoo_quantized_base(self) -> bool:
        return True  # QLoRA: PEFT wraps the bitsandbytes layers and trains A, B beside them

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: dict[str, Any]) -> None:
        quantized = [name for name in selection["targets"] if is_quantized_linear(model.get_submodule(name))]
        if quantized and mutates_base(self.init_lora_weights):
            raise UnsupportedWeightError(
                f"LoRA init {self.init_lora_weights!r} rewrites the base weights, which are quantized here "
                f"({quantized[0]}, ...); the model is left unchanged: use init_lora_weights true or gaussian"
            )
        int8 = [name for name in quantized if layer_quantization(model.get_submodule(name)) == "int8"]
        if int8 and self.use_dora:
            raise UnsupportedWeightError(
                f"DoRA on an int8 base fails inside peft/bitsandbytes on this CPU (the row scales of {int8[0]} are "
                "gone after the first step); the model is left unchanged: use --model.quantization nf4 for DoRA"
            )
        plain = [name for name in selection["targets"] if name not in set(quantized)]
        check_trainable_modules(model, plain, "LoRA")  # before PEFT changes anything
        config = peft_config(self.options(), selection["targets"])
        inject(model, config, seed=selection["seed"], float32=self.adapter_dtype == "float32")

    @hookimpl
    def ftzoo_extract_adapter(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return extract(model)

    # ------------------------------------------------------------------ adapter files and loading

    @hookimpl
    def ftzoo_save_adapter_files(self, adapter: Adapter, folder: str) -> None:
        write_peft_files(adapter, self.options(adapter), folder)

    @hookimpl
    def ftzoo_load_adapter(self, model: nn.Module, adapter: Adapter) -> bool:
        """Inject the adapter un-fused (PEFT layers, adapter name ``"default"``)."""
        load(model, self._stored_config(adapter), adapter.tensors)
        return True

    # ------------------------------------------------------------------ deltas, serving, merge

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        config = self._stored_config(adapter)
        deltas = {}
        for module, tensors in split_by_layer(adapter.tensors).items():
            weight = model.get_parameter(f"{module}.weight")
            deltas[f"{module}.weight"] = delta_weight(weight, tensors, config)
        for key, trained in adapter.tensors.items():
            if "lora_" not in key:  # a trained bias (bias="all"/"lora_only"), stored whole
                base = model.get_parameter(base_name(key))
                deltas[base_name(key)] = trained.to(base) - base.detach()
        return deltas

    @hookimpl
    def ftzoo_serving_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, nn.Module] | None:
        """``s · B A x`` per target (DoRA: the base output rescaled plus the rescaled ``s · B A x``,
        :class:`DoraDelta`); trained biases decline (dense default)."""
        if _trains_bias(adapter):
            return None
        scaling = self._scaling(adapter)
        modules = {}
        dora = self.options(adapter)["use_dora"]
        for module, tensors in split_by_layer(adapter.tensors).items():
            weight = model.get_parameter(f"{module}.weight")
            if dora:
                bias = model.get_submodule(module).bias
                modules[module] = DoraDelta.of(weight, bias, tensors, scaling)
                continue
            a, b = (tensors[k].to(device=weight.device, dtype=weight.dtype) for k in ("lora_A.weight", "lora_B.weight"))
            modules[module] = LowRankDelta(a, b, scaling)
        return modules

    @hookimpl
    def ftzoo_merge_adapters(
        self, adapters: list[Adapter], weights: list[float], options: MergeOptions
    ) -> Adapter | None:
        """Linear merges (``how`` = sum, average, task_arithmetic) by stacking ranks, exactly::

            Σ cᵢ sᵢ Bᵢ Aᵢ = s₁ · [c₁s₁/s₁ B₁, c₂s₂/s₁ B₂, …] · [A₁; A₂; …]     (rank Σ rᵢ)

        Declines (``None``: the merge tool combines dense deltas) for other formulas, DoRA
        (not linear in ``B A``), trained biases, or adapters of different targets.
        """
        coefficients = linear_coefficients(weights, options)
        first = adapters[0]
        if coefficients is None or self.options(first)["use_dora"]:
            return None
        if any(a.selection["targets"] != first.selection["targets"] for a in adapters):
            return None
        if any(_trains_bias(a) for a in adapters):
            return None
        scalings = [self._scaling(a) for a in adapters]
        parts: dict[str, list[torch.Tensor]] = {}
        for adapter, coefficient, scaling in zip(adapters, coefficients, scalings):
            for key, tensor in adapter.tensors.items():
                factor = coefficient * scaling / scalings[0] if key.endswith("lora_B.weight") else 1.0
                parts.setdefault(key, []).append(tensor.float() * factor)
        # Rank R = Σ rᵢ; loading rescales alpha for the stored rank, so s stays s₁.
        tensors = {
            key: torch.cat(chunks, dim=1 if key.endswith("lora_B.weight") else 0).to(first.tensors[key].dtype)
            for key, chunks in parts.items()
        }
        info = {"merged_from": [a.info for a in adapters], "weights": list(weights), "options": options.as_dict()}
        return Adapter(first.method, dict(first.config), first.selection, first.base, tensors, info)

    def _scaling(self, adapter: Adapter) -> float:
        config = self._stored_config(adapter)
        return config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r)


class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al., 2024): a trained magnitude per output row times
    the direction of ``W + s · B A``. The same options as :class:`LoRA`, without ``use_dora``.

    Defaults follow DoRA's LLaMA commonsense setting (r=32, alpha=64).
    """

    name = "dora"

    def __init__(
        self,
        r: int = 32,
        alpha: float = 64,
        dropout: float = 0.05,
        target_modules: Sequence[str] | str = LLM_ADAPTERS_TARGETS,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        bias: Literal["none", "all", "lora_only"] = "none",
        adapter_dtype: Literal["model", "float32"] = "model",
    ) -> None:
        super().__init__(r, alpha, dropout, target_modules, use_rslora, init_lora_weights, True, bias, adapter_dtype)


def _trains_bias(adapter: Adapter) -> bool:
    return any("lora_" not in key for key in adapter.tensors)


def linear_coefficients(weights: list[float], options: MergeOptions) -> list[float] | None:
    """The coefficients ``cᵢ`` of a merge ``Σ cᵢ Δᵢ`` (:mod:`zoo.merging` formulas), or ``None``
    when the formula is not linear. For dense LoRA deltas every entry is changed by every
    adapter, so ``average`` over "changed" entries is the plain weighted mean."""
    how = options.how
    if how == "sum":
        return list(weights)
    if how == "task_arithmetic":
        return [options.scale * w for w in weights]
    if how == "average":
        return [w / sum(weights) for w in weights]
    return None
