"""S²FT adapters: the trained slices as differences from the base, in its own coordinates.

An S²FT adapter holds, for every trained projection, the delta of the selected rows or
columns (units in ascending original order) under ``"<base parameter>.s2ft_delta"``::

    model.layers.3.self_attn.o_proj.weight.s2ft_delta   [hidden, k·head_dim]  (columns)
    model.layers.3.mlp.up_proj.weight.s2ft_delta        [k, hidden]           (rows)
    model.layers.3.self_attn.v_proj.bias.s2ft_delta     [k·head_dim]          (rows with a bias)

and its selection says which units they are (:mod:`plugins.s2ft.selection`). So it applies
to a plain copy of the base: fusing adds each delta into its rows/columns only, and keeps
the original slices so that unfusing restores the base exactly.
:func:`structured_updates` is the public view of this form for serving tools.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import nn

from plugins.s2ft.config import ROLES
from plugins.s2ft.layers import S2FTLinear
from plugins.s2ft.permute import unit_index
from plugins.s2ft.quantized import S2FTQuantizedLinear
from plugins.s2ft.selection import SELECTION_FORMAT, SELECTION_VERSION, projections_of
from zoo import Adapter, AdapterError, MergeOptions

DELTA_SUFFIX = ".s2ft_delta"


class StructuredUpdate(NamedTuple):
    """One slice update: ``param[..., indices, ...] (along dim) += delta``."""

    param: str
    """Base parameter name, e.g. ``"model.layers.0.self_attn.o_proj.weight"``."""
    dim: int
    """0: rows, 1: columns."""
    indices: torch.Tensor
    """Row/column indices (long, ascending) in the base model's coordinates."""
    delta: torch.Tensor
    """The update of those rows/columns: ``param.shape`` with ``dim`` of ``len(indices)``."""


def structured_updates(adapter: Adapter) -> list[StructuredUpdate]:
    """The adapter as slice updates ``(param_name, dim, indices, delta_slice)``.

    Raises:
        AdapterError: a tensor listed by the selection is missing from the adapter.
    """
    updates = []
    for entry in projections_of(adapter.selection):
        indices = unit_index(sorted(entry["units"]), entry["unit_size"])
        for kind in ("weight", "bias"):
            param = f"{entry['module']}.{kind}"
            delta = adapter.tensors.get(param + DELTA_SUFFIX)
            if delta is None and kind == "weight":
                raise AdapterError(
                    f"S²FT adapter lacks {param + DELTA_SUFFIX} for layer {entry['layer']} {entry['role']}"
                )
            if delta is not None:
                updates.append(StructuredUpdate(param, entry["dim"] if kind == "weight" else 0, indices, delta))
    return updates


def extract(model: nn.Module) -> dict[str, torch.Tensor]:
    """The deltas of every :class:`S2FTLinear` (or :class:`S2FTQuantizedLinear`) of a rewritten
    model, in original order."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, (S2FTLinear, S2FTQuantizedLinear)):
            weight, bias = module.delta()
            tensors[f"{name}.weight{DELTA_SUFFIX}"] = weight.contiguous()
            if bias is not None:
                tensors[f"{name}.bias{DELTA_SUFFIX}"] = bias.contiguous()
    return tensors


def check_fits(model: nn.Module, adapter: Adapter) -> list[tuple[StructuredUpdate, nn.Parameter]]:
    """Each update with the base parameter it applies to, after checking every shape.

    Raises:
        AdapterError: naming the layer and projection whose parameter is missing, is
            already rewritten by S²FT, has another shape than the adapter's, or whose
            selected units are out of range.
    """
    pairs = []
    entries = {e["module"]: e for e in projections_of(adapter.selection)}
    for update in structured_updates(adapter):
        module_name = update.param.rsplit(".", 1)[0]
        entry = entries[module_name]
        where = f"layer {entry['layer']} {entry['role']} projection ({update.param})"
        try:
            module = model.get_submodule(module_name)
            param = model.get_parameter(update.param)
        except AttributeError as err:
            raise AdapterError(f"S²FT adapter does not fit this base model: it has no {where}") from err
        if isinstance(module, S2FTLinear):
            raise AdapterError(f"{where} is rewritten by S²FT (permuted); fuse adapters into a plain base model")
        expected = list(param.shape)
        size = entry["num_units"] * entry["unit_size"]
        expected_delta = list(param.shape)
        expected_delta[update.dim] = len(update.indices)
        if param.shape[update.dim] != size or list(update.delta.shape) != expected_delta:
            raise AdapterError(
                f"S²FT adapter does not fit this base model: {where} has shape {expected}, but the adapter was "
                f"trained on {entry['num_units']} {entry['unit']}s of {entry['unit_size']} "
                f"(dimension {update.dim} of size {size}) with a delta of shape {list(update.delta.shape)}"
            )
        bad = [u for u in entry["units"] if not 0 <= u < entry["num_units"]]
        if bad:
            raise AdapterError(
                f"S²FT adapter selection names {entry['unit']}s {sorted(bad)[:5]} of {where}; there are "
                f"{entry['num_units']} (0 to {entry['num_units'] - 1}): the adapter is damaged"
            )
        pairs.append((update, param))
    return pairs


@torch.no_grad()
def fuse(model: nn.Module, adapter: Adapter, scale: float) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """Add ``scale × delta`` into the selected rows/columns; return the original slices.

    The sum is formed in at least float32 and rounded once to the weight's dtype.
    """
    undo = []
    for update, param in check_fits(model, adapter):  # every shape is checked before anything changes
        index = update.indices.to(param.device)
        original = param.index_select(update.dim, index)  # [.., k, ..]: the undo record
        dtype = torch.promote_types(param.dtype, torch.float32)
        fused = original.to(dtype) + scale * update.delta.to(device=param.device, dtype=dtype)
        param.index_copy_(update.dim, index, fused.to(param.dtype))
        undo.append((update.param, update.dim, index, original))
    return undo


@torch.no_grad()
def unfuse(model: nn.Module, undo: list[tuple[str, int, torch.Tensor, torch.Tensor]]) -> None:
    """Copy the original slices back: the base is restored bit for bit."""
    for name, dim, index, original in reversed(undo):
        model.get_parameter(name).index_copy_(dim, index, original)


def dense_deltas(model: nn.Module, adapter: Adapter) -> dict[str, torch.Tensor]:
    """Dense ``fused - base`` tensors per base parameter name."""
    deltas: dict[str, torch.Tensor] = {}
    for update, param in check_fits(model, adapter):
        dense = deltas.setdefault(update.param, torch.zeros_like(param))
        dense.index_add_(update.dim, update.indices.to(param.device), update.delta.to(param))
    return deltas


def merge(adapters: list[Adapter], weights: list[float], options: MergeOptions) -> Adapter | None:
    """The linear merges (``sum``, ``task_arithmetic``, ``average``) of S²FT adapters, in S²FT form.

    The merged selection is the union of the selections; where selections overlap the
    deltas add up (``average`` divides by all weights, or per entry by the weights of the
    adapters that changed it, as ``options.average_over`` says), so the result equals
    :func:`zoo.merging.combine` of the dense deltas.

    Returns:
        The merged adapter, or ``None`` for any other ``how`` (the caller merges dense deltas).

    Raises:
        AdapterError: the adapters disagree on a projection's shape or were trained on other bases.
    """
    how = options.how
    if how not in ("sum", "task_arithmetic", "average"):
        return None
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"merge needs one weight per adapter, got {len(adapters)} adapters and {len(weights)} weights")
    for other in adapters[1:]:
        other.base.check_same(adapters[0].base, what="an S²FT adapter being merged")
    if how == "task_arithmetic":
        weights = [options.scale * w for w in weights]
    union: dict[str, dict[str, Any]] = {}
    for adapter in adapters:
        for entry in projections_of(adapter.selection):
            merged = union.setdefault(entry["module"], {**entry, "units": set()})
            if any(merged[k] != entry[k] for k in ("layer", "role", "dim", "unit_size", "num_units")):
                raise AdapterError(f"S²FT adapters disagree on the shape of {entry['module']}; they cannot be merged")
            merged["units"] |= set(entry["units"])
    tensors = _merged_tensors(adapters, weights, union, options.average_over if how == "average" else None)
    entries = sorted(
        ({**e, "units": sorted(e["units"])} for e in union.values()),
        key=lambda e: (e["layer"], list(ROLES).index(e["role"])),
    )
    selection = {"format": SELECTION_FORMAT, "version": SELECTION_VERSION, "projections": entries}
    info = {"merged": {"options": options.as_dict(), "weights": list(weights), "count": len(adapters)}}
    return Adapter(adapters[0].method, dict(adapters[0].config), selection, adapters[0].base, tensors, info)


def _merged_tensors(
    adapters: list[Adapter], weights: list[float], union: dict[str, dict[str, Any]], average_over: str | None
) -> dict[str, torch.Tensor]:
    """Scatter each adapter's deltas into the union's slots and add them up; with
    ``average_over``, divide by all weights (``"all"``) or, per entry, by the weights of the
    adapters that changed it (``"changed"``)."""
    dtype = functools.reduce(
        torch.promote_types, (t.dtype for a in adapters for t in a.tensors.values()), torch.float32
    )
    out_dtype = next(iter(adapters[0].tensors.values())).dtype
    sums: dict[str, torch.Tensor] = {}
    support: dict[str, torch.Tensor] = {}  # Σ of the weights of the adapters that changed each entry
    for adapter, weight in zip(adapters, weights):
        for update in structured_updates(adapter):
            entry = union[update.param.rsplit(".", 1)[0]]
            slot = {u: i for i, u in enumerate(sorted(entry["units"]))}
            units = (update.indices[:: entry["unit_size"]] // entry["unit_size"]).tolist()  # ascending
            own = [slot[u] for u in units]
            index = unit_index(own, entry["unit_size"])  # this adapter's slices inside the union
            shape = list(update.delta.shape)
            shape[update.dim] = len(slot) * entry["unit_size"]
            key = update.param + DELTA_SUFFIX
            delta = update.delta.to("cpu", dtype)
            sums.setdefault(key, torch.zeros(shape, dtype=dtype)).index_add_(update.dim, index, delta, alpha=weight)
            changed = (delta != 0).to(dtype)
            support.setdefault(key, torch.zeros(shape, dtype=dtype)).index_add_(update.dim, index, changed, alpha=weight)
    if average_over == "all":
        sums = {name: t / sum(weights) for name, t in sums.items()}
    elif average_over == "changed":
        sums = {name: t / support[name].clamp_min(torch.finfo(dtype).tiny) for name, t in sums.items()}
    return {name: t.to(out_dtype) for name, t in sums.items()}
