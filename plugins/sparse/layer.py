"""A linear layer whose weight trains only at a fixed set of entries.

::

    W_eff = W + scatter(values → flat indices)       W [out, in] frozen, values [k] trained
    y     = x W_effᵀ + b

Memory. The trainable state is ``values`` [k] (+ its gradient and Adam's two moments) and
the index buffer [k] int32: about 20 bytes per masked entry, nothing per unmasked entry.

Autograd. The obvious ``F.linear(x, W + zeros.index_put(idx, values))`` keeps ``W_eff``
(a dense [out, in] tensor) alive from the forward to the backward of *every* adapted layer,
i.e. a second copy of all targeted weights in activation memory, and builds a dense
``zeros`` too. :class:`SparseDeltaLinearFn` saves only ``x`` (which any linear saves) and
references to ``W``, ``values`` and ``idx``, and rebuilds ``W_eff`` transiently:

* forward:   ``W_eff = W.flatten().index_add(idx, values)``  (transient [out, in]);
             ``y = F.linear(x, W_eff, b)``  (one dense GEMM, as the base layer does);
* backward:  ``∂x = ∂y W_eff``  (``W_eff`` rebuilt, transient);
             ``∂values[j] = Σ_t ∂y[t, r_j] · x[t, c_j]``, computed either as
             ``(∂yᵀ x).flatten()[idx]`` (``grad_mode="dense"``: one GEMM, a transient
             [out, in] gradient freed at once; fastest on GPUs) or with
             ``torch.sparse.sampled_addmm`` on the mask's CSR pattern
             (``grad_mode="sampled"``: only k dot products of length T, no [out, in]
             tensor at all; faster on CPU at densities around 1 %).

``tests/plugins/sparse/test_sparse_layer.py`` measures the saved tensors of both forms.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def merged_weight(weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``W + scatter(values)``, a new tensor of ``weight``'s shape and dtype."""
    flat = weight.detach().reshape(-1).index_add(0, indices, values.detach().to(weight.dtype))
    return flat.view_as(weight)


def csr_tensor(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """``torch.sparse_csr_tensor`` without its "beta" warning on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def sampled_grad(grad_out: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``(grad_outᵀ x)[idx]`` through the mask's CSR pattern: k dot products of length T."""
    out_features, in_features = shape
    idx = indices.to(torch.int64)
    rows, cols = idx // in_features, idx % in_features  # idx sorted → row-major CSR order
    crow = torch.zeros(out_features + 1, dtype=torch.int64, device=idx.device)
    crow[1:] = torch.bincount(rows, minlength=out_features).cumsum(0)
    pattern = csr_tensor(crow, cols, torch.zeros_like(idx, dtype=x.dtype), shape)
    # pattern [out, in] sampled at its nonzeros from grad_outᵀ [out, T] @ x [T, in]
    return torch.sparse.sampled_addmm(pattern, grad_out.t().contiguous(), x.contiguous(), beta=0.0).values()


class SparseDeltaLinearFn(torch.autograd.Function):
    """``F.linear(x, W + scatter(values), b)``, differentiable in ``x`` and ``values`` only."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, values, indices, sampled: bool):
        ctx.save_for_backward(x, weight, values, indices)  # no [out, in] tensor of our own
        ctx.sampled = sampled
        return F.linear(x, merged_weight(weight, values, indices), bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight, values, indices = ctx.saved_tensors
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            w_eff = merged_weight(weight, values, indices).to(grad_out.dtype)
            grad_x = (grad_out @ w_eff).to(x.dtype)  # [..., out] @ [out, in] → [..., in]
        if ctx.needs_input_grad[3]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [T, out]
            x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)  # [T, in]
            if ctx.sampled and g2.dtype in (torch.float32, torch.float64):
                grad_values = sampled_grad(g2, x2, indices, weight.shape)
            else:
                grad_values = (g2.t() @ x2).reshape(-1).index_select(0, indices)  # [out, in] → [k]
            grad_values = grad_values.to(values.dtype)
        return grad_x, None, None, grad_values, None, None


class SparseMaskLinear(nn.Linear):
    """An ``nn.Linear`` that trains ``mask_values`` at ``mask_indices`` of its frozen weight.

    It takes the place of the base layer under the same name and shares its ``weight`` and
    ``bias`` (no copy), so base parameter names do not change.

    Args:
        base: the frozen base layer.
        indices: sorted flat indices ``row * in_features + col`` of the trainable entries.
        values_dtype: dtype of the trained values (float32 even for a half-precision base,
            so that small updates are not rounded away in the optimizer).
        grad_mode: ``"dense"`` or ``"sampled"`` (see the module docstring).
    """

    def __init__(self, base: nn.Linear, indices: torch.Tensor, values_dtype: torch.dtype, grad_mode: str) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a new weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        device = base.weight.device
        index_dtype = torch.int32 if base.weight.numel() < 2**31 else torch.int64
        self.mask_values = nn.Parameter(torch.zeros(len(indices), dtype=values_dtype, device=device))
        self.register_buffer("mask_indices", indices.to(device=device, dtype=index_dtype), persistent=False)
        self.grad_mode = grad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sampled = self.grad_mode == "sampled"
        return SparseDeltaLinearFn.apply(x, self.weight, self.bias, self.mask_values, self.mask_indices, sampled)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, masked={self.mask_values.numel()}, grad_mode={self.grad_mode}"


class SparseUpdateFn(torch.autograd.Function):
    """``x ↦ F.linear(x, scatter(values))`` with ``scatter(values)`` [out, in] zero outside the
    mask, differentiable in ``x`` and ``values``: the update beside a quantized weight.

    It saves ``x`` and references to ``values`` and ``indices``; the dense update exists only
    transiently, in the forward and in the backward (as :class:`SparseDeltaLinearFn`'s ``W_eff``).
    """

    @staticmethod
    def forward(ctx: Any, x, values, indices, shape: tuple[int, int], sampled: bool):
        ctx.save_for_backward(x, values, indices)
        ctx.shape, ctx.sampled = shape, sampled
        return F.linear(x, _scattered(values, indices, shape, x.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, values, indices = ctx.saved_tensors
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_out @ _scattered(values, indices, ctx.shape, grad_out.dtype)).to(x.dtype)  # [..., in]
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [T, out]
            x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)  # [T, in]
            if ctx.sampled and g2.dtype in (torch.float32, torch.float64):
                grad_values = sampled_grad(g2, x2, indices, torch.Size(ctx.shape))
            else:
                grad_values = (g2.t() @ x2).reshape(-1).index_select(0, indices)  # [out, in] → [k]
            grad_values = grad_values.to(values.dtype)
        return grad_x, grad_values, None, None, None


def _scattered(values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    flat = torch.zeros(shape[0] * shape[1], dtype=dtype, device=values.device)
    return flat.index_add_(0, indices, values.detach().to(dtype)).view(shape)


class SparseMaskQuantizedLinear(nn.Module):
    """A quantized frozen linear layer (bitsandbytes) with trained values at fixed entries
    beside it: ``y = Q(W) x + scatter(values) x``, ``values`` zero at the start.

    The base layer is kept as ``base_layer``, unchanged; its dequantizing matmul gives the
    input gradient of ``Q(W) x``. ``mask_values`` are the differences from the base at the
    masked entries, as on a float base, so the adapter is the same.

    Args:
        base: the bitsandbytes layer.
        indices: sorted flat indices ``row * in_features + col``.
        values_dtype: dtype of the trained values.
        grad_mode: ``"dense"`` or ``"sampled"`` (see the module docstring).
    """

    def __init__(self, base: nn.Module, indices: torch.Tensor, values_dtype: torch.dtype, grad_mode: str) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        device = base.bias.device if base.bias is not None else next(base.parameters()).device
        index_dtype = torch.int32 if self.in_features * self.out_features < 2**31 else torch.int64
        self.mask_values = nn.Parameter(torch.zeros(len(indices), dtype=values_dtype, device=device))
        self.register_buffer("mask_indices", indices.to(device=device, dtype=index_dtype), persistent=False)
        self.grad_mode = grad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # [..., out]: Q(W) x (+ b)
        shape = (self.out_features, self.in_features)
        update = SparseUpdateFn.apply(x, self.mask_values, self.mask_indices, shape, self.grad_mode == "sampled")
        return y + update.to(y.dtype)

    def extra_repr(self) -> str:
        return f"masked={self.mask_values.numel()} beside a quantized weight, grad_mode={self.grad_mode}"
