"""Sparse masks on a model: the selection format, the rewrite, and the adapter's tensors.

Selection (JSON-able; carried by checkpoints, broadcast to ranks, written to adapter.json)::

    {"strategy": "gradient", "density": 0.01, "seed": 0,
     "encoding": "delta-uint32-zlib-base64",
     "targets": {"model.layers.0.self_attn.q_proj": {"shape": [64, 64], "count": 41,
                                                      "indices": "eJxj..."}, ...}}

Adapter tensors, per target ``<name>`` (base coordinates, no permutation)::

    <name>.mask_indices   int32/int64 [k]   flat indices row * in_features + col, sorted
    <name>.mask_values    float32 [k]       the trained differences W_trained - W at them

so tools need no selection to fuse: ``W.flatten()[idx] += values``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugins.sparse.indices import ENCODING, decode, encode
from plugins.sparse.layer import SparseMaskLinear, SparseMaskQuantizedLinear, csr_tensor
from zoo import AdapterError, SparseParts, check_trainable_modules, is_quantized_linear, weight_shape

INDICES, VALUES = "mask_indices", "mask_values"


def make_selection(chosen: dict[str, torch.Tensor], model: nn.Module, **recipe: Any) -> dict[str, Any]:
    """The JSON-able selection for ``chosen`` (target name → sorted flat indices)."""
    targets = {
        name: {"shape": list(weight_shape(model.get_submodule(name))), "count": len(idx), "indices": encode(idx)}
        for name, idx in chosen.items()
    }
    return {**recipe, "encoding": ENCODING, "targets": targets}


def selected_indices(selection: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Target name → int64 flat indices, decoded from a selection.

    Raises:
        ValueError: the selection uses another encoding.
    """
    if selection.get("encoding") != ENCODING:
        raise ValueError(f"sparse selection encoding {selection.get('encoding')!r} is not {ENCODING!r}")
    return {name: decode(t["indices"], t["count"]) for name, t in selection["targets"].items()}


def rewrite(model: nn.Module, chosen: dict[str, torch.Tensor], grad_mode: str) -> None:
    """Replace each target ``nn.Linear`` by a :class:`SparseMaskLinear` at the same name.

    Every target is checked before any is replaced, so a refusal leaves the model as it was.

    Raises:
        TypeError: a target is not a plain ``nn.Linear``.
        ValueError: mask indices fall outside a target's weight.
        UnsupportedWeightError: a target holds integer weights that are not a bitsandbytes layer.

    A bitsandbytes (quantized) target gets a :class:`SparseMaskQuantizedLinear`: zero values
    beside the quantized weight.
    """
    quantized = {name for name in chosen if is_quantized_linear(model.get_submodule(name))}
    for name, indices in chosen.items():
        base = model.get_submodule(name)
        if type(base) is not nn.Linear and name not in quantized:
            raise TypeError(f"sparse masks adapt nn.Linear layers; {name} is a {type(base).__name__}")
        shape = weight_shape(base)
        check_indices(name, indices, shape[0] * shape[1], shape)
    check_trainable_modules(model, [name for name in chosen if name not in quantized], "sparse masks")
    for name, indices in chosen.items():
        base = model.get_submodule(name)
        if name in quantized:  # values beside the quantized weight (plugins.sparse.layer)
            dtype = getattr(base, "compute_dtype", None) or torch.float32
            values_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            model.set_submodule(name, SparseMaskQuantizedLinear(base, indices, values_dtype, grad_mode))
            continue
        values_dtype = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
        model.set_submodule(name, SparseMaskLinear(base, indices, values_dtype, grad_mode))


def check_indices(name: str, indices: torch.Tensor, numel: int, shape: tuple[int, ...]) -> None:
    """Refuse flat mask indices outside a weight of ``numel`` entries.

    Raises:
        ValueError: naming the target, the offending index and the weight's shape.
    """
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        bad = int(indices.max()) if int(indices.max()) >= numel else int(indices.min())
        raise ValueError(
            f"mask index {bad} of {name} is outside its weight of shape {list(shape)} ({numel} entries)"
        )


def extract(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<name>.mask_indices`` and ``<name>.mask_values`` of every masked layer."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, (SparseMaskLinear, SparseMaskQuantizedLinear)):
            tensors[f"{name}.{INDICES}"] = module.mask_indices.detach()
            tensors[f"{name}.{VALUES}"] = module.mask_values.detach()
    return tensors


def adapter_targets(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Target name → (indices, values) from adapter tensors."""
    suffix = "." + INDICES
    return {
        key[: -len(suffix)]: (tensors[key].to(torch.int64), tensors[key[: -len(suffix)] + "." + VALUES])
        for key in tensors
        if key.endswith(suffix)
    }


def fitting_targets(
    model: nn.Module, tensors: dict[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor, torch.Tensor, nn.Parameter]]:
    """``(name, indices, values, weight)`` per target, after checking every target fits ``model``.

    Raises:
        AdapterError: a target is missing from the model, or its indices and values disagree
            in count or fall outside the weight.
    """
    out = []
    for name, (indices, values) in adapter_targets(tensors).items():
        try:
            weight = model.get_parameter(f"{name}.weight")
        except AttributeError as err:
            raise AdapterError(f"sparse adapter does not fit this base model: it has no {name}.weight") from err
        if indices.shape != values.shape:
            raise AdapterError(
                f"sparse adapter: {name} has {indices.numel()} mask indices but {values.numel()} values"
            )
        try:
            check_indices(name, indices, weight.numel(), tuple(weight.shape))
        except ValueError as err:
            raise AdapterError(f"sparse adapter does not fit this base model: {err}") from err
        out.append((name, indices, values, weight))
    return out


def fuse(model: nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``W.flatten()[idx] += scale · values`` in place; returns the k original entries per weight.

    With ``scale=1`` the fused weight equals, bit for bit, the ``W_eff`` the trained layer used.
    """
    undo = {}
    with torch.no_grad():
        for name, indices, values, weight in fitting_targets(model, tensors):  # all checked before any change
            flat, idx = weight.view(-1), indices.to(weight.device)
            undo[f"{name}.weight"] = (idx, flat.index_select(0, idx).clone())
            update = values if scale == 1.0 else values * scale
            flat.index_add_(0, idx, update.to(device=weight.device, dtype=weight.dtype))
    return undo


def unfuse(model: nn.Module, undo: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put back the original entries that :func:`fuse` changed (exact)."""
    with torch.no_grad():
        for name, (idx, original) in undo.items():
            model.get_parameter(name).view(-1).index_copy_(0, idx, original)


def deltas(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense ``[out, in]`` deltas, zero outside the mask, in each weight's dtype."""
    out = {}
    for name, indices, values, weight in fitting_targets(model, tensors):
        flat = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
        flat.index_add_(0, indices.to(weight.device), values.to(device=weight.device, dtype=weight.dtype))
        out[f"{name}.weight"] = flat.view_as(weight)
    return out


def merge(
    tensors: list[dict[str, torch.Tensor]], weights: list[float], average_over: str | None = None
) -> dict[str, torch.Tensor]:
    """``Σ wᵢ · Δᵢ`` on the union of the masks (entries in several masks add up).

    Args:
        tensors: the adapters' tensors.
        weights: one coefficient per adapter.
        average_over: ``None`` for the plain sum; ``"all"`` divides by ``Σ wᵢ``; ``"changed"``
            divides each entry by the weights of the adapters that changed it.
    """
    merged: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for adapter_tensors, weight in zip(tensors, weights):
        for name, (indices, values) in adapter_targets(adapter_tensors).items():
            merged.setdefault(name, []).append((indices, values.float(), weight))
    out = {}
    for name, parts in merged.items():
        union, where = torch.unique(torch.cat([p[0] for p in parts]), sorted=True, return_inverse=True)
        summed = torch.zeros(len(union)).index_add_(0, where, torch.cat([v * w for _, v, w in parts]))
        if average_over == "all":
            summed /= sum(weights)
        elif average_over == "changed":
            changed = torch.cat([(v != 0).float() * w for _, v, w in parts])
            norm = torch.zeros(len(union)).index_add_(0, where, changed)
            summed = torch.where(norm > 0, summed / norm.clamp_min(1e-30), torch.zeros_like(summed))
        first = tensors[0]
        out[f"{name}.{INDICES}"] = union.to(first[f"{name}.{INDICES}"].dtype)
        out[f"{name}.{VALUES}"] = summed.to(first[f"{name}.{VALUES}"].dtype)
    return out


class SparseDelta(nn.Module):
    """``x ↦ x Δᵀ`` for a sparse ``Δ`` [out, in] held as CSR, for mixed-batch serving."""

    def __init__(self, indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        out_features, in_features = shape
        idx = indices.to(torch.int64)
        crow = torch.zeros(out_features + 1, dtype=torch.int64, device=idx.device)
        crow[1:] = torch.bincount(idx // in_features, minlength=out_features).cumsum(0)
        self.register_buffer("delta", csr_tensor(crow, idx % in_features, values, shape))

    def sparse(self) -> SparseParts:
        """Its CSR parts, so that a mixed batch applies several adapters' deltas as one product."""
        d = self.delta
        return SparseParts(d.crow_indices(), d.col_indices(), d.values(), tuple(d.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(self.delta.dtype)  # [T, in]
        out = (self.delta @ flat.t()).t()  # [out, in] @ [in, T] → [T, out]
        return out.reshape(*x.shape[:-1], -1)
