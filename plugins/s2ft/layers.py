"""The trainable S²FT linear layer and its partial backward pass.

After co-permutation (:mod:`plugins.s2ft.permute`) the selected units of a projection
occupy a few contiguous *runs* of rows (``dim=0``) or columns (``dim=1``) of its weight
``W [out, in]``. :class:`S2FTLinear` keeps ``W`` frozen and untouched (it still holds the
base values, so the base is never copied) and holds the trained values of the selected
slice as its own ``nn.Parameter`` (``s2ft_weight``; ``s2ft_bias`` for selected rows with a
bias), an ordinary parameter with an ordinary ``.grad``::

    columns (O, down): W = [ W_S | frozen ]     s2ft_weight = P  [out, k]
    rows (V, up, gate): W = [ W_S ; frozen ]    s2ft_weight = P  [k, in]

The layer computes what ``W`` with ``W_S`` replaced by ``P`` computes, as the frozen matmul
plus a correction of the size of the slice (``D = P - W_S``, zero before training)::

    columns: y = x Wᵀ + b + x[..., S] Dᵀ            [tokens, k] @ [k, out]
    rows:    y = x Wᵀ + b;  y[..., S] += x Dᵀ        [tokens, in] @ [in, k]

The backward pass (:class:`S2FTLinearFunction`) computes

    grad_x = grad_y W  (+ the slice's correction)        to keep backpropagating
    columns: grad_P = grad_yᵀ x[..., S]      saves only x[..., S]   [tokens, k]
    rows:    grad_P = grad_y[..., S]ᵀ x      saves x (the rows need all of it)

and no gradient for the frozen part of ``W``, which saves nothing. The update is
``P - W_S`` at any time, so extracting an adapter needs no copy of the original slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.s2ft.permute import unit_index

Runs = tuple[tuple[int, int], ...]


def gather_runs(tensor: torch.Tensor, dim: int, runs: Runs) -> torch.Tensor:
    """The runs of ``tensor`` along ``dim``, concatenated (a copy, or a view for one dense run)."""
    parts = [tensor.narrow(dim, start, end - start) for start, end in runs]
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim)


def add_runs_(tensor: torch.Tensor, dim: int, runs: Runs, values: torch.Tensor) -> None:
    """``tensor[runs along dim] += values`` in place (``values``: [.., k, ..])."""
    offset = 0
    for start, end in runs:
        tensor.narrow(dim, start, end - start).add_(values.narrow(dim, offset, end - start))
        offset += end - start


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on, else the input's."""
    device = x.device.type
    if device in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class S2FTLinearFunction(torch.autograd.Function):
    """``y = x W'ᵀ + b'`` (``W'``: ``W`` with its runs replaced by ``P``) whose backward
    computes weight gradients only for the runs."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        s2ft_weight: torch.Tensor,
        s2ft_bias: torch.Tensor | None,
        dim: int,
        runs: Runs,
    ) -> torch.Tensor:
        dtype = _compute_dtype(x)
        y = F.linear(x, weight, bias)  # [..., out], the frozen matmul (autocast, if on, applies here)
        delta = (s2ft_weight - gather_runs(weight, dim, runs)).to(dtype)  # D: [out, k] or [k, in]
        if dim == 1:
            x_s = gather_runs(x, -1, runs).to(dtype)  # [..., k]: the only activation kept
            y.view(-1, y.shape[-1]).addmm_(x_s.view(-1, x_s.shape[-1]), delta.t().to(y.dtype))  # += x_S Dᵀ
            saved = x_s
        else:
            saved = x.to(dtype)  # [..., in]: the rows' gradient needs the whole input
            correction = saved.matmul(delta.t())  # [..., k]
            if s2ft_bias is not None:
                correction += (s2ft_bias - gather_runs(bias, 0, runs)).to(dtype)
            add_runs_(y, -1, runs, correction.to(y.dtype))
        if not (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]):
            saved = None  # nothing trains here (e.g. evaluation): keep no activation
        ctx.save_for_backward(saved, weight, s2ft_weight)
        ctx.dim, ctx.runs, ctx.dtype = dim, runs, dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, weight, s2ft_weight = ctx.saved_tensors
        dim, runs, dtype = ctx.dim, ctx.runs, ctx.dtype
        grad_y = grad_y.to(dtype)
        g = grad_y.reshape(-1, grad_y.shape[-1])  # [tokens, out]
        grad_x = grad_s = grad_sb = None
        if ctx.needs_input_grad[0]:
            delta = (s2ft_weight - gather_runs(weight, dim, runs)).to(dtype)  # D, recomputed: nothing kept
            grad_x = grad_y.matmul(weight.to(dtype))  # [..., out] @ [out, in] → [..., in]
            if dim == 1:
                add_runs_(grad_x, -1, runs, grad_y.matmul(delta))  # [..., out] @ [out, k] → [..., k]
            else:
                grad_x += gather_runs(grad_y, -1, runs).matmul(delta)  # [..., k] @ [k, in] → [..., in]
        if saved is not None:
            a = saved.reshape(-1, saved.shape[-1])  # [tokens, k] (columns) or [tokens, in] (rows)
            if dim == 1:
                grad_s = g.t().matmul(a)  # [out, tokens] @ [tokens, k] → [out, k]
            else:
                g_s = gather_runs(g, 1, runs)  # [tokens, k]
                grad_s = g_s.t().matmul(a)  # [k, tokens] @ [tokens, in] → [k, in]
                if ctx.needs_input_grad[4]:
                    grad_sb = g_s.sum(0).to(s2ft_weight.dtype)  # [k]
            grad_s = grad_s.to(s2ft_weight.dtype)
        return grad_x, None, None, grad_s, grad_sb, None, None


class S2FTLinear(nn.Module):
    """A frozen linear layer whose selected rows or columns train.

    Args:
        base: the (already co-permuted) linear layer; its ``weight`` and ``bias``
            parameters are taken over as they are, not copied, and never modified.
        dim: 0 to train rows (output features), 1 to train columns (input features).
        runs: ``[start, end)`` ranges of the trained rows/columns.
        slot_units: original unit index of each unit in the trained slice, in slice
            order (to express the update in the base model's coordinates).
        unit_size: rows/columns per unit (``head_dim`` or 1).
    """

    def __init__(
        self, base: nn.Module, dim: int, runs: Sequence[tuple[int, int]], slot_units: Sequence[int], unit_size: int
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.weight.shape[1], base.weight.shape[0]
        self.weight = base.weight
        self.bias = base.bias
        self.dim = dim
        self.runs: Runs = tuple((int(a), int(b)) for a, b in runs)
        self.slot_units = [int(u) for u in slot_units]
        self.unit_size = unit_size
        with torch.no_grad():
            selected = gather_runs(self.weight, dim, self.runs).clone()  # [k, in] or [out, k]: the slice only
        self.s2ft_weight = nn.Parameter(selected, requires_grad=True)
        if dim == 0 and self.bias is not None:
            self.s2ft_bias = nn.Parameter(gather_runs(self.bias.detach(), 0, self.runs).clone())  # [k]
        else:
            self.register_parameter("s2ft_bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return S2FTLinearFunction.apply(
            x, self.weight, self.bias, self.s2ft_weight, self.s2ft_bias, self.dim, self.runs
        )

    def delta(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Trained minus original values of the slice, units in ascending original order.

        Computed in at least float32, so that ``original + delta`` gives back the trained
        bf16/fp16 values exactly.

        Returns:
            ``(weight_delta, bias_delta)``: ``[k, in]`` / ``[k]`` for rows, ``[out, k]``
            and ``None`` for columns.
        """
        by_unit = sorted(range(len(self.slot_units)), key=self.slot_units.__getitem__)
        index = unit_index(by_unit, self.unit_size, self.weight.device)  # slice slots in original-unit order
        dtype = torch.promote_types(self.s2ft_weight.dtype, torch.float32)
        with torch.no_grad():
            weight = self.s2ft_weight.to(dtype) - gather_runs(self.weight, self.dim, self.runs).to(dtype)
            bias = None
            if self.s2ft_bias is not None:
                bias = self.s2ft_bias.to(dtype) - gather_runs(self.bias, 0, self.runs).to(dtype)
                bias = bias.index_select(0, index)
        return weight.index_select(self.dim, index), bias

    def extra_repr(self) -> str:
        kind = "rows" if self.dim == 0 else "columns"
        trained = sum(b - a for a, b in self.runs)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"trained {kind}={trained} in {len(self.runs)} run(s)"
        )
