"""Merging adapters: the formulas, their options, and the one way to combine adapters.

:func:`merge_adapters` asks the adapters' method for a merge in its own form
(``ftzoo_merge_adapters``, e.g. S²FT's union of column blocks, LoRA's stacked ranks) when
every adapter comes from one method; otherwise, or when the method declines, it merges
their dense deltas with :func:`combine` into a ``merged`` adapter, which every tool reads
like any other. Either way the update is the one :func:`combine` defines: a method's own
merge must equal it (the contract suite checks this for every method and formula), so the
result never depends on which path was taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference.adapters import checked_deltas, hooks_for
from zoo.merging.combine import How, MergeOptions, combine, format_overlap, overlap_report

MERGED_METHOD = "merged"
"""Registered name of the method of dense merge results (``plugins/merge``)."""

__all__ = [
    "MERGED_METHOD",
    "How",
    "MergeOptions",
    "combine",
    "format_overlap",
    "merge_adapters",
    "merged_adapter",
    "overlap_report",
]


def merged_adapter(deltas: dict[str, torch.Tensor], base: BaseModelInfo, info: dict[str, Any] | None = None) -> Adapter:
    """A ``merged`` adapter from dense updates (base parameter name → ``fused - base``)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in deltas.items()}
    return Adapter(
        method=MERGED_METHOD, config={}, selection=sorted(tensors), base=base, tensors=tensors, info=dict(info or {})
    )


def own_merge(adapters: Sequence[Adapter], weights: Sequence[float], options: MergeOptions) -> Adapter | None:
    """The method's merge in its own form, when every adapter is of one method and it merges."""
    if len({a.method for a in adapters}) != 1:
        return None
    hooks = hooks_for(adapters[0])
    return hooks.ftzoo_merge_adapters(adapters=list(adapters), weights=list(weights), options=options)


def merge_adapters(
    adapters: dict[str, Adapter],
    weights: Sequence[float],
    options: MergeOptions,
    model: nn.Module,
    info: BaseModelInfo,
    task_vectors: list[dict[str, torch.Tensor]] | None = None,
) -> Adapter:
    """Merge adapters of one base model into one adapter.

    Args:
        adapters: label → adapter, all of the base ``model``.
        weights: one weight per adapter.
        options: the formula and its settings.
        model: the plain base model (for the dense deltas' shapes and dtypes).
        info: its identity, recorded in a ``merged`` result.
        task_vectors: the adapters' dense deltas, if the caller has them already.

    Returns:
        The method's own merge, or a ``merged`` adapter of the dense merge.

    Raises:
        AdapterError: an adapter does not fit the base.
        ValueError: the weights do not match the adapters.
    """
    if len(weights) != len(adapters):
        raise ValueError(f"{len(adapters)} adapters but {len(weights)} weights")
    own = own_merge(list(adapters.values()), weights, options)
    if own is not None:
        return own
    if task_vectors is None:
        task_vectors = [checked_deltas(hooks_for(a), a, model, f"adapter {label}") for label, a in adapters.items()]
    dense = combine(task_vectors, weights, options)
    dense = {name: d.to(model.get_parameter(name).dtype) for name, d in dense.items()}
    return merged_adapter(dense, info)
