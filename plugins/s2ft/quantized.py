"""S²FT on a quantized frozen base: the selected rows or columns train as a float update
beside the quantized weight.

A quantized weight (:mod:`zoo.quantization`: bitsandbytes NF4 or int8) cannot be permuted in
place without re-quantizing it, nor take an update, so on a quantized base S²FT leaves the
projections where they are and trains, for each selected projection, a dense update ``D``
of the selected units only, initialised to zero, in the model's dtype::

    columns (O, down):  D [out, k]     y = Q(W) x + D x[..., S]             S: the selected input columns
    rows (V, up, gate): D [k, in]      y = Q(W) x;  y[..., S] += D x (+ Δb) S: the selected output rows

``Q(W) x`` is the bitsandbytes layer itself: its matmul dequantizes on the fly, and so does
its backward for the input gradient (``grad_x = grad_y Q(W)``); it computes no weight
gradient and saves no activation of its own. The update's autograd is that of a small
linear layer on the gathered input, so the partial backward keeps its savings:

    columns: grad_D = grad_yᵀ x[..., S]        saves only x[..., S]   [tokens, k]
    rows:    grad_D = grad_y[..., S]ᵀ x        saves x                [tokens, in]

The adapter is the same as S²FT's on a float base (:mod:`plugins.s2ft.adapter`): ``D`` with
its units in ascending original order, under ``<projection>.weight.s2ft_delta``, and the
same selection. Fusing adds it to the rows/columns of a float base, so an adapter trained on
the quantized base applies to the unquantized base, and to the dequantized weights
``Q(W)``, where it gives exactly the model that was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plugins.s2ft.permute import unit_index


class S2FTQuantizedLinear(nn.Module):
    """A quantized frozen linear layer with a trainable float update of some rows or columns.

    Args:
        base: the bitsandbytes layer (``Linear4bit``, ``Linear8bitLt``), kept as
            ``base_layer`` unchanged (its weight is not copied).
        dim: 0 to train rows (output features), 1 to train columns (input features).
        units: the selected units (original indices, any order).
        unit_size: rows/columns per unit (``head_dim`` or 1).
        dtype: dtype of the update (the model's compute dtype).
    """

    def __init__(self, base: nn.Module, dim: int, units: Sequence[int], unit_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dim, self.unit_size = dim, unit_size
        self.slot_units = sorted(int(u) for u in units)  # the update's slots, ascending: base coordinates as stored
        device = next(base.parameters()).device
        index = unit_index(self.slot_units, unit_size, device)  # [k]: selected rows/columns
        self.register_buffer("s2ft_index", index, persistent=False)
        shape = (len(index), self.in_features) if dim == 0 else (self.out_features, len(index))
        self.s2ft_weight = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))  # D, zero: the base at init
        if dim == 0 and base.bias is not None:
            self.s2ft_bias = nn.Parameter(torch.zeros(len(index), dtype=dtype, device=device))  # Δb [k]
        else:
            self.register_parameter("s2ft_bias", None)

    @property
    def weight(self) -> nn.Parameter:
        """The quantized base weight (for code that inspects ``module.weight``)."""
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # [..., out]: Q(W) x (+ b), bitsandbytes' dequantizing matmul
        if self.dim == 1:
            x_s = x.index_select(-1, self.s2ft_index)  # [..., k]: the only activation the update keeps
            return y + F.linear(x_s, self.s2ft_weight.to(x_s.dtype)).to(y.dtype)  # [..., k] @ [k, out]
        bias = None if self.s2ft_bias is None else self.s2ft_bias.to(x.dtype)
        correction = F.linear(x, self.s2ft_weight.to(x.dtype), bias)  # [..., in] @ [in, k] → [..., k]
        return y.index_add(-1, self.s2ft_index, correction.to(y.dtype))  # y[..., S] += correction

    def delta(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The update in base coordinates (units ascending), in at least float32, as
        :meth:`plugins.s2ft.layers.S2FTLinear.delta` gives it."""
        dtype = torch.promote_types(self.s2ft_weight.dtype, torch.float32)
        with torch.no_grad():
            weight = self.s2ft_weight.detach().to(dtype, copy=True)
            bias = None if self.s2ft_bias is None else self.s2ft_bias.detach().to(dtype, copy=True)
        return weight, bias

    def extra_repr(self) -> str:
        kind = "rows" if self.dim == 0 else "columns"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, trained {kind}="
            f"{len(self.s2ft_index)} beside a quantized weight"
        )
