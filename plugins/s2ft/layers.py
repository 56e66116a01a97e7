"""The trainable S²FT linear layer and its partial backward pass.

After co-permutation (:mod:`plugins.s2ft.permute`) the selected units of a projection
occupy a few contiguous *runs* of rows (``dim=0``) or columns (``dim=1``) of its weight
``W [out, in]``. :class:`S2FTLinear` keeps ``W`` frozen and exposes the selected slice as its
own ``nn.Parameter`` (``s2ft_weight``; ``s2ft_bias`` for selected rows with a bias), an
ordinary parameter with an ordinary ``.grad``::

    columns (O, down): W = [ W_S | frozen ]     s2ft_weight = P  [out, k]
    rows (V, up, gate): W = [ W_S ; frozen ]    s2ft_weight = P  [k, in]

**One run (the usual case; always with multi-head attention): in place.** ``P`` *is* ``W_S``,
a view of ``W``'s storage, so the optimizer updates the slice inside ``W`` (as the official
code's in-place update does) and the layer holds no second copy of the slice: the forward
pass is the frozen matmul itself. The original values of the slice, needed only to express
the update as a difference (:meth:`S2FTLinear.delta`), are kept in host memory (CPU), not
on the accelerator and not in the state dict.

**Several runs (GQA with partial head groups, overlapping FFN roles): a copy.** ``P`` is a
copy of the runs; ``W`` keeps the original values, and the layer computes what ``W`` with
``W_S`` replaced by ``P`` computes, as the frozen matmul plus a correction of the size of
the slice (``D = P - W_S``, zero before training)::

    columns: y = x Wᵀ + b + x[..., S] Dᵀ            [tokens, k] @ [k, out]
    rows:    y = x Wᵀ + b;  y[..., S] += x Dᵀ        [tokens, in] @ [in, k]

The correction is also what an in-place layer computes whenever ``P`` is no longer a view of
``W`` (a ``deepcopy``; FSDP, for which the module gives ``P`` its own storage before wrapping,
:func:`zoo.distributed.unshare_parameters`; DeepSpeed's flat buffers): at that moment ``W_S``
holds ``P``'s values, so ``W`` with ``W_S`` replaced by ``P`` is still the trained weight.
Device and dtype moves (``model.to``) keep the view.

The backward pass (:class:`S2FTLinearFunction`) computes

    grad_x = grad_y W  (+ the slice's correction)        to keep backpropagating
    columns: grad_P = grad_yᵀ x[..., S]      saves only x[..., S]   [tokens, k]
    rows:    grad_P = grad_y[..., S]ᵀ x      saves x (the rows need all of it)

and no gradient for the frozen part of ``W``, which saves nothing.
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
        in_place: bool,
    ) -> torch.Tensor:
        dtype = _compute_dtype(x)
        y = F.linear(x, weight, bias)  # [..., out], the frozen matmul (autocast, if on, applies here)
        if dim == 1:
            saved = gather_runs(x, -1, runs).to(dtype)  # x_S [..., k]: the only activation kept
        else:
            saved = x.to(dtype)  # [..., in]: the rows' gradient needs the whole input
        if not in_place:  # W still holds the original slice: add x_S Dᵀ (columns) or x Dᵀ (rows)
            delta = (s2ft_weight - gather_runs(weight, dim, runs)).to(dtype)  # D: [out, k] or [k, in]
            if dim == 1:
                y.view(-1, y.shape[-1]).addmm_(saved.view(-1, saved.shape[-1]), delta.t().to(y.dtype))
            else:
                correction = saved.matmul(delta.t())  # [..., k]
                if s2ft_bias is not None:
                    correction += (s2ft_bias - gather_runs(bias, 0, runs)).to(dtype)
                add_runs_(y, -1, runs, correction.to(y.dtype))
        if not (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]):
            saved = None  # nothing trains here (e.g. evaluation): keep no activation
        ctx.save_for_backward(saved, weight, s2ft_weight)
        ctx.dim, ctx.runs, ctx.dtype, ctx.in_place = dim, runs, dtype, in_place
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, weight, s2ft_weight = ctx.saved_tensors
        dim, runs, dtype = ctx.dim, ctx.runs, ctx.dtype
        grad_y = grad_y.to(dtype)
        g = grad_y.reshape(-1, grad_y.shape[-1])  # [tokens, out]
        grad_x = grad_s = grad_sb = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y.matmul(weight.to(dtype))  # [..., out] @ [out, in] → [..., in]
        if ctx.needs_input_grad[0] and not ctx.in_place:
            delta = (s2ft_weight - gather_runs(weight, dim, runs)).to(dtype)  # D, recomputed: nothing kept
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
        return grad_x, None, None, grad_s, grad_sb, None, None, None


class S2FTLinear(nn.Module):
    """A frozen linear layer whose selected rows or columns train.

    Args:
        base: the (already co-permuted) linear layer; its ``weight`` and ``bias``
            parameters are taken over as they are, not copied; only a one-run slice (trained in
            place) is ever written, by the optimizer.
        dim: 0 to train rows (output features), 1 to train columns (input features).
        runs: ``[start, end)`` ranges of the trained rows/columns.
        slot_units: original unit index of each unit in the trained slice, in slice
            order (to express the update in the base model's coordinates).
        unit_size: rows/columns per unit (``head_dim`` or 1).

    Attributes:
        in_place: the slice is one run, trained inside ``W`` (see the module docstring).
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
        self.in_place = len(self.runs) == 1
        trains_bias = dim == 0 and self.bias is not None
        with torch.no_grad():
            if self.in_place:  # views of W (and b): the optimizer updates the slice inside them
                weight = self._slice(self.weight, dim)
                bias = self._slice(self.bias, 0) if trains_bias else None
                self._original = (_on_host(weight), None if bias is None else _on_host(bias))
            else:  # [k, in] or [out, k]: a copy of the runs; W keeps the original values
                weight = gather_runs(self.weight, dim, self.runs).clone()
                bias = gather_runs(self.bias.detach(), 0, self.runs).clone() if trains_bias else None
        self.s2ft_weight = nn.Parameter(weight, requires_grad=True)
        self.register_parameter("s2ft_bias", None if bias is None else nn.Parameter(bias))

    def _slice(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """The one run of ``tensor`` along ``dim``: a view (same storage)."""
        (start, end) = self.runs[0]
        return tensor.detach().narrow(dim, start, end - start)

    def _aliased(self) -> bool:
        """Whether ``s2ft_weight`` (and ``s2ft_bias``) are still the views of ``W`` (and ``b``)."""
        pairs = [(self.s2ft_weight, self.weight, self.dim)]
        if self.s2ft_bias is not None:
            pairs.append((self.s2ft_bias, self.bias, 0))
        for param, base, dim in pairs:
            view = self._slice(base, dim)
            if param.data_ptr() != view.data_ptr() or param.stride() != view.stride() or param.shape != view.shape:
                return False
        return True

    def _apply(self, fn: Any, recurse: bool = True) -> S2FTLinear:
        """A move or cast (``model.to``) copies ``W`` and ``P`` apart: if ``P`` was the view of ``W``,
        make it the view of the moved ``W`` again (which holds the same values); the host copy of
        the original slice is cast alike. A layer whose ``P`` already had its own storage (after a
        ``deepcopy``, or :func:`zoo.distributed.unshare_parameters` for FSDP) keeps it."""
        aliased = self.in_place and self._aliased()
        super()._apply(fn, recurse)
        if aliased and not self._aliased():
            with torch.no_grad():
                self.s2ft_weight.data = self._slice(self.weight, self.dim)
                if self.s2ft_bias is not None:
                    self.s2ft_bias.data = self._slice(self.bias, 0)
        if self.in_place:
            weight, bias = self._original
            self._original = (_cast_like(weight, self.weight), _cast_like(bias, self.weight))
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """The trained slice as a tensor of its own: a view would make ``torch.save`` write ``W``'s whole storage."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.in_place and not keep_vars:  # keep_vars asks for the parameters themselves
            for name in ("s2ft_weight", "s2ft_bias"):
                if prefix + name in destination:
                    destination[prefix + name] = destination[prefix + name].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_place = self.in_place and self._aliased()  # else W_S holds P's values of the moment they parted
        return S2FTLinearFunction.apply(
            x, self.weight, self.bias, self.s2ft_weight, self.s2ft_bias, self.dim, self.runs, in_place
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
        if self.in_place:
            original_weight, original_bias = (None if t is None else t.to(self.weight.device) for t in self._original)
        else:
            original_weight = gather_runs(self.weight, self.dim, self.runs)
            original_bias = None if self.s2ft_bias is None else gather_runs(self.bias, 0, self.runs)
        with torch.no_grad():
            weight = self.s2ft_weight.to(dtype) - original_weight.to(dtype)
            bias = None
            if self.s2ft_bias is not None:
                bias = self.s2ft_bias.to(dtype) - original_bias.to(dtype)
                bias = bias.index_select(0, index)
        return weight.index_select(self.dim, index), bias

    def extra_repr(self) -> str:
        kind = "rows" if self.dim == 0 else "columns"
        trained = sum(b - a for a, b in self.runs)
        where = "in place" if self.in_place else "a copy"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"trained {kind}={trained} in {len(self.runs)} run(s), {where}"
        )


def _on_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` in host memory (a ``meta`` tensor stays on ``meta``: no data)."""
    return torch.empty_like(tensor) if tensor.is_meta else tensor.detach().to("cpu", copy=True)


def _cast_like(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` in ``like``'s dtype (a cast model's original slice is cast alike), kept where it is."""
    return tensor if tensor is None or tensor.dtype == like.dtype else tensor.to(like.dtype)
