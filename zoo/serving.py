"""Adapters as small modules beside the frozen base: the core default of ``ftzoo_serving_deltas``.

Mixed-adapter serving (``tools/serve.py``) runs every base module once for the whole batch
and adds, to the rows of each request, what that request's adapter changes::

    y = base(x)                                  # [B, T, out], once for the batch
    y[rows_a] += delta_a(x[rows_a])              # per adapter a, on its own rows

For a linear layer with weight ``W`` (``[out, in]``) and dense update ``D`` (same shape),
``delta(x) = x @ D.T``. Structured sparse updates touch few rows or columns of ``D``, so
:class:`SliceDelta` keeps only the nonzero block::

              cols C (|C| of in)
           ┌──┬──────┬──┬───────┐
    rows R │  │ ████ │  │ ████  │   D[R][:, C] = block  [|R|, |C|]
           └──┴──────┴──┴───────┘
    delta(x)[..., R] = x[..., C] @ block.T                [..., |C|] @ [|C|, |R|]

S²FT updates whole columns of ``o_proj``/``down_proj`` (the selected heads and channels),
so ``R`` is every row and the delta costs ``out × |C|`` instead of ``out × in``.
Embeddings get an :class:`EmbeddingDelta`; any other module whose parameters changed
(norms) gets a :class:`FunctionalDelta`, which runs the module with the changed
parameters and subtracts the base output.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F


class SliceDelta(nn.Module):
    """The change of a linear layer's output from the nonzero block of its weight update.

    Args:
        block: ``D[rows][:, cols]``, ``[len(rows), len(cols)]`` (``None``: no weight change).
        rows: output features that change (``None``: all ``out_features``).
        cols: input features the change reads (``None``: all ``in_features``).
        out_features: the layer's output size.
        bias: the bias update, ``[out_features]`` (``None``: unchanged).
    """

    def __init__(
        self,
        block: torch.Tensor | None,
        rows: torch.Tensor | None,
        cols: torch.Tensor | None,
        out_features: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features = out_features
        self.register_buffer("block", block, persistent=False)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            return self.bias.expand(*x.shape[:-1], self.out_features)
        xs = x if self.cols is None else x.index_select(-1, self.cols)  # [..., |C|]
        change = F.linear(xs, self.block)  # [..., |R|]
        if self.rows is not None:
            full = change.new_zeros(*change.shape[:-1], self.out_features)
            change = full.index_copy_(-1, self.rows, change)  # scatter to [..., out]
        return change if self.bias is None else change + self.bias

    def extra_repr(self) -> str:
        rows = "all" if self.rows is None else len(self.rows)
        cols = "all" if self.cols is None else len(self.cols)
        return f"rows={rows}, cols={cols}, out_features={self.out_features}, bias={self.bias is not None}"


@dataclass(frozen=True)
class LowRankParts:
    """A linear layer's change as ``rescale ⊙ (y - base_bias) + factor ⊙ s (x Aᵀ) Bᵀ``, ``y`` its base
    output: what a delta module's ``low_rank()`` gives so that the mixed model batches the
    low-rank terms of several adapters into one pair of ``bmm`` (LoRA: no vectors; DoRA: both).

    Attributes:
        a: ``A`` [r, in].
        b: ``B`` [out, r].
        scaling: ``s``.
        rescale: [out] float32, or ``None``: the base output is not rescaled.
        factor: [out] float32, or ``None``: 1.
        base_bias: the base layer's bias [out] (``None``: none), taken out of ``y`` before the rescale.
    """

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    rescale: torch.Tensor | None = None
    factor: torch.Tensor | None = None
    base_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class SparseParts:
    """A linear layer's change as ``x Δᵀ`` for a sparse ``Δ`` [out, in] in CSR form: what a delta
    module's ``sparse()`` gives so that the mixed model applies the deltas of several adapters as
    one block-diagonal sparse product (sparse masks). ``Tensor.to_sparse_csr()`` gives the parts
    of any ``Δ``: ``crow_indices()``, ``col_indices()``, ``values()``.

    Attributes:
        crow: row pointers, int64 [out + 1], from 0 to ``k`` (row ``i``'s entries are ``crow[i]:crow[i+1]``).
        cols: their columns, int64 [k], increasing within each row.
        values: their values [k].
        shape: ``(out, in)``.
    """

    crow: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]


class EmbeddingDelta(nn.Module):
    """The change of an embedding's output: the update's rows for the input ids."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)  # [..., embedding_dim]


class FunctionalDelta(nn.Module):
    """The change of any module's output: run it with updated parameters, minus the base.

    Costs two runs of the module on the adapter's rows, so it is meant for small modules
    (norms). The base module is referenced, not registered, so it is not duplicated in the
    model's parameters.

    Args:
        module: the base module.
        deltas: local parameter name (``"weight"``) → update.
    """

    def __init__(self, module: nn.Module, deltas: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.__dict__["module"] = module  # not a submodule: see the class docstring
        self.names = sorted(deltas)
        for i, name in enumerate(self.names):
            self.register_buffer(f"delta_{i}", deltas[name], persistent=False)

    def forward(self, *args: Any) -> torch.Tensor:
        params = {n: p + getattr(self, f"delta_{i}") for i, (n, p) in enumerate(self._params())}
        return functional_call(self.module, params, args) - self.module(*args)

    def _params(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, self.module.get_parameter(name)) for name in self.names]


def parameter_owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``id(parameter)`` → every ``(module name, module, local name)`` that holds it.

    A tied parameter (input embeddings shared with ``lm_head``) has several owners, and its
    update changes the output of each.
    """
    owners: dict[int, list[tuple[str, nn.Module, str]]] = defaultdict(list)
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module._parameters.items():
            if param is not None:
                owners[id(param)].append((module_name, module, local))
    return owners


def serving_modules(deltas: dict[str, torch.Tensor], model: nn.Module) -> dict[str, nn.Module]:
    """Turn dense updates (base parameter name → ``fused - base``) into delta modules.

    Args:
        deltas: as returned by ``ftzoo_adapter_deltas``.
        model: the plain base model.

    Returns:
        Module name (as in ``model.named_modules()``) → module mapping that module's input
        to the change of its output. Updates that are all zero are left out.

    Raises:
        AttributeError: a delta names no parameter of ``model``.
    """
    owners = parameter_owners(model)
    per_module: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
    for name, delta in deltas.items():
        param = model.get_parameter(name)
        if not bool(delta.any()):
            continue
        for module_name, module, local in owners[id(param)]:
            per_module.setdefault(module_name, (module, {}))[1][local] = delta.to(param.dtype)
    return {name: _delta_module(module, changed) for name, (module, changed) in per_module.items()}


def _delta_module(module: nn.Module, changed: dict[str, torch.Tensor]) -> nn.Module:
    if isinstance(module, nn.Linear) and set(changed) <= {"weight", "bias"}:
        return slice_delta(changed.get("weight"), module.out_features, changed.get("bias"))
    if isinstance(module, nn.Embedding) and set(changed) == {"weight"} and module.max_norm is None:
        return EmbeddingDelta(changed["weight"])
    return FunctionalDelta(module, changed)


def slice_delta(weight: torch.Tensor | None, out_features: int, bias: torch.Tensor | None = None) -> SliceDelta:
    """A :class:`SliceDelta` that keeps only the nonzero rows and columns of ``weight``.

    A dimension is sliced only when some of it is untouched, so a dense update stays a
    plain matmul and an S²FT column update costs only its columns.
    """
    if weight is None or not bool(weight.any()):
        return SliceDelta(None, None, None, out_features, bias)
    nonzero = weight != 0
    rows = nonzero.any(dim=1).nonzero().squeeze(1)  # [|R|]
    cols = nonzero.any(dim=0).nonzero().squeeze(1)  # [|C|]
    block = weight
    if len(rows) < weight.shape[0]:
        block = block.index_select(0, rows)
    else:
        rows = None
    if len(cols) < weight.shape[1]:
        block = block.index_select(1, cols)
    else:
        cols = None
    return SliceDelta(block.contiguous(), rows, cols, out_features, bias)
