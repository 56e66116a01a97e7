"""One LoRA layer's update as a dense weight delta or as a small serving module.

Deltas are computed by PEFT itself, on a throwaway ``peft.tuners.lora.Linear`` wrapped
around a float32 copy of one base weight at a time, so LoRA, rsLoRA and DoRA merge exactly
as PEFT merges them and the peak extra memory is one weight matrix.
"""

from __future__ import annotations

import dataclasses

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

from plugins.lora.model import ADAPTER
from zoo import LowRankParts


def delta_weight(weight: torch.Tensor, tensors: dict[str, torch.Tensor], config: LoraConfig) -> torch.Tensor:
    """``merged - weight`` for one layer, in ``weight``'s dtype.

    Args:
        weight: the base weight ``W`` [out, in].
        tensors: this layer's ``lora_A.weight`` [r, in], ``lora_B.weight`` [out, r] and, for
            DoRA, ``lora_magnitude_vector`` [out].
        config: the ``LoraConfig`` the tensors were stored with (rank, alpha, DoRA, ...).
    """
    w32 = weight.detach().to(torch.float32)
    holder = nn.Module()
    holder.layer = nn.Linear(w32.shape[1], w32.shape[0], bias=False, device="meta")
    holder.layer.weight = nn.Parameter(w32.clone(), requires_grad=False)
    layer_config = dataclasses.replace(config, target_modules=["layer"], init_lora_weights=True)
    inject_adapter_in_model(layer_config, holder, adapter_name=ADAPTER)
    state = {f"layer.{name}": t.to(device=w32.device, dtype=torch.float32) for name, t in tensors.items()}
    set_peft_model_state_dict(holder, state, adapter_name=ADAPTER)
    layer = holder.layer
    with torch.no_grad():
        if ADAPTER in layer.lora_variant:  # DoRA: m / ‖W + s B A‖ · (W + s B A) - W
            delta = layer.lora_variant[ADAPTER].merge_safe(layer, ADAPTER, w32.clone()) - w32
        else:  # s · B A
            delta = layer.get_delta_weight(ADAPTER)
    return delta.to(weight.dtype)


class LowRankDelta(nn.Module):
    """``x ↦ s · B (A x) (+ Δbias)``: a LoRA layer's output change, for mixed-batch serving.

    Args:
        lora_a: ``A`` [r, in].
        lora_b: ``B`` [out, r].
        scaling: ``s``.
        bias_delta: trained minus base bias [out], when the bias trained (``bias="all"``).
    """

    def __init__(
        self, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, bias_delta: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("lora_A", lora_a)
        self.register_buffer("lora_B", lora_b)
        self.register_buffer("bias_delta", bias_delta)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        out = (x @ self.lora_A.T) @ self.lora_B.T * self.scaling  # [..., in] → [..., r] → [..., out]
        return out if self.bias_delta is None else out + self.bias_delta

    def low_rank(self) -> LowRankParts | None:
        """The parts the mixed model batches across adapters (``None`` with a bias change)."""
        return LowRankParts(self.lora_A, self.lora_B, self.scaling) if self.bias_delta is None else None


class DoraDelta(nn.Module):
    """``(x, y) ↦ (c - 1) ⊙ (y - b) + c ⊙ s · B (A x)``: a DoRA layer's output change, for mixed-batch serving.

    DoRA's merged weight is ``c ⊙ (W + s B A)`` with ``c = m / ‖W + s B A‖`` per output row, so its
    change of the output is the base output ``y = W x + b`` (without ``b``) rescaled, plus the
    rescaled low-rank term: ``r`` columns per row and a vector per step, where the dense delta
    read a whole ``[out, in]`` matrix per adapter per step. The mixed model passes the base
    output (``takes_base_output``).

    Args:
        lora_a: ``A`` [r, in].
        lora_b: ``B`` [out, r].
        scaling: ``s``.
        factor: ``c`` [out] (float32: ``c - 1`` is small, and is kept as computed).
        base_bias: the base layer's bias ``b`` [out], or ``None``.
    """

    takes_base_output = True

    def __init__(
        self,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        factor: torch.Tensor,
        base_bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("lora_A", lora_a)
        self.register_buffer("lora_B", lora_b)
        self.register_buffer("factor", factor.to(torch.float32))
        self.register_buffer("rescale", factor.to(torch.float32) - 1)  # c - 1, before any rounding of c
        self.register_buffer("base_bias", base_bias)
        self.scaling = scaling

    @classmethod
    def of(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, tensors: dict[str, torch.Tensor], scaling: float
    ) -> DoraDelta:
        """The delta of one layer: base ``weight`` [out, in] and ``bias``, its ``lora_A.weight``,
        ``lora_B.weight`` and ``lora_magnitude_vector`` (``c`` computed as PEFT merges, in float32)."""
        a, b, m = (
            tensors[k].to(device=weight.device) for k in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")
        )
        w32 = weight.detach().to(torch.float32)
        norm = torch.linalg.norm(w32 + (b.float() @ a.float()) * scaling, dim=1)
        factor = m.float() / norm
        return cls(a.to(weight.dtype), b.to(weight.dtype), scaling, factor, None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        low = (x @ self.lora_A.T) @ self.lora_B.T * self.scaling  # [..., out]
        plain = base_output if self.base_bias is None else base_output - self.base_bias
        return self.rescale * plain.float() + self.factor * low.float()

    def low_rank(self) -> LowRankParts:
        """The parts the mixed model batches across adapters."""
        return LowRankParts(self.lora_A, self.lora_B, self.scaling, self.rescale, self.factor, self.base_bias)
