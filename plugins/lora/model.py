"""LoRA on a Hugging Face model, in place, through PEFT.

``peft.inject_adapter_in_model`` replaces each target ``nn.Linear`` by a
``peft.tuners.lora.Linear`` at the same name, so the model keeps its own module names
(``model.layers.0.self_attn.q_proj``), the base weight moves one level down
(``q_proj.base_layer.weight``) and the adapter sits beside it, keyed by adapter name::

    q_proj ─┬─ base_layer            W  [out, in]   frozen
            ├─ lora_A["default"]     A  [r, in]     trainable
            ├─ lora_B["default"]     B  [out, r]    trainable, zero at init
            └─ lora_magnitude_vector["default"]  m [out]  (DoRA only)

    h = W x + s · B A x                              (LoRA)
    h = m / ‖W + s B A‖_row · (W + s B A) x          (DoRA, Liu et al., 2024, eq. 5)

Several adapters can live on one layer under different names (PEFT's mixed-adapter
batches select them per row with ``adapter_names``); ftzoo trains and loads ``"default"``.

Tensors leave and enter the model in PEFT's own key naming
(``get_peft_model_state_dict``: the adapter name removed,
``model.layers.0.self_attn.q_proj.lora_A.weight``), which is also what an exported PEFT
adapter holds after its ``base_model.model.`` prefix.

PiSSA and OLoRA initialise ``B0 A0`` from ``W`` and train on ``W_res = W - s B0 A0``. The
trained update in base coordinates is ``s (B A - B0 A0)``, i.e. a plain LoRA of rank 2r::

    A' = [A; A0]  [2r, in]      B' = [B, -B0]  [out, 2r]      (PEFT's subtract_mutated_init)

so ftzoo keeps ``A0``, ``B0`` as non-persistent buffers and exports ``A'``, ``B'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.dora import DoraLinearLayer
from peft.tuners.tuners_utils import cast_adapter_dtype
from peft.utils.other import transpose
from torch import nn

from plugins.lora.config import mutates_base

ADAPTER = "default"
INITIAL_A, INITIAL_B = "ftzoo_initial_lora_A", "ftzoo_initial_lora_B"


def inject(
    model: nn.Module, config: LoraConfig, seed: int, adapter_name: str = ADAPTER, float32: bool = False
) -> None:
    """Inject LoRA layers into ``model`` in place; their random init is drawn from ``seed``.

    The seed makes the init (and so a resumed run's PiSSA/OLoRA residual) the same on every
    rank and every rebuild. The adapters take the base layer's dtype (PEFT puts them there);
    ``float32`` upcasts them on a half-precision base (``get_peft_model``'s default,
    ``autocast_adapter_dtype``): float32 master values, at 2× the adapter bytes and a float32
    copy of each adapted layer's input for backward (DoRA's magnitude layers become
    :class:`BaseDtypeDoraLayer`, which keeps no float32 copy of the weight as peft's would).
    """
    training = model.training
    with _seeded(model, seed):
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    if float32:
        cast_adapter_dtype(model, adapter_name)  # float32 adapters on a half-precision base
        for layer in lora_layers(model):
            for name, magnitude in layer.lora_magnitude_vector.items():  # DoRA: no float32 copy of W kept
                if name == adapter_name and type(magnitude) is DoraLinearLayer and type(layer.get_base_layer()) is nn.Linear:
                    magnitude.__class__ = BaseDtypeDoraLayer
    model.train(training)  # new layers are created in training mode (dropout on)
    if mutates_base(config.init_lora_weights):
        for layer in lora_layers(model):
            layer.register_buffer(INITIAL_A, layer.lora_A[adapter_name].weight.detach().clone(), persistent=False)
            layer.register_buffer(INITIAL_B, layer.lora_B[adapter_name].weight.detach().clone(), persistent=False)


class BaseDtypeDoraLayer(DoraLinearLayer):
    """peft's DoRA magnitude layer whose dropout path multiplies the frozen weight in its own dtype.

    With dropout, peft recomputes the base output on the dropped-out input as
    ``F.linear(x, W.to(x.dtype))``; with float32 adapters on a bf16/fp16 base that is a float32
    copy of ``W``, which the matmul keeps for backward: one per adapted layer (16.8 GiB at 32
    Llama-2-7B layers). Here that matmul runs in ``W``'s dtype, as the base layer's own forward
    (the path without dropout) does, and keeps nothing but ``W`` itself. The weight norm is
    computed as peft computes it (detached, so nothing of it is kept).
    """

    def forward(
        self,
        x: torch.Tensor,
        *,
        lora_A: nn.Module,
        lora_B: nn.Module,
        scaling: float,
        base_layer: nn.Module,
        base_result: torch.Tensor | None = None,
        adapter_name: str = "default",
    ) -> torch.Tensor:
        weight = base_layer.weight
        if base_result is None and weight.dtype != x.dtype:  # peft subtracts the bias again
            base_result = F.linear(x.to(weight.dtype), transpose(weight, self.fan_in_fan_out), base_layer.bias)
            base_result = base_result.to(x.dtype)
        return super().forward(
            x, lora_A=lora_A, lora_B=lora_B, scaling=scaling, base_layer=base_layer, base_result=base_result,
            adapter_name=adapter_name,
        )  # fmt: skip


@contextlib.contextmanager
def _seeded(model: nn.Module, seed: int) -> Iterator[None]:
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def lora_layers(model: nn.Module) -> Iterator[LoraLayer]:
    """Every PEFT LoRA layer of ``model``."""
    return (m for m in model.modules() if isinstance(m, LoraLayer))


def extract(model: nn.Module, adapter_name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's tensors in PEFT key naming; PiSSA/OLoRA converted to plain LoRA."""
    tensors = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    tensors = {name: t.detach() for name, t in tensors.items()}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, INITIAL_A):
            a, b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
            tensors[a] = torch.cat([tensors[a], getattr(module, INITIAL_A)], dim=0)  # [2r, in]
            tensors[b] = torch.cat([tensors[b], -getattr(module, INITIAL_B)], dim=1)  # [out, 2r]
    return tensors


def load(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor], adapter_name: str = ADAPTER) -> None:
    """Inject ``config`` into a plain base under ``adapter_name`` and set the trained tensors.

    The adapter layers take the dtype the tensors were stored in where that is float32 (an
    adapter trained with ``adapter_dtype="float32"`` on a half-precision base), else the base's.

    Raises:
        ValueError: a tensor does not belong to any injected layer.
    """
    training = model.training
    with _seeded(model, 0):  # the init is overwritten; the seed only avoids touching the global RNG
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    if any(t.dtype == torch.float32 for t in tensors.values()):
        cast_adapter_dtype(model, adapter_name)  # trained and stored as float32 master values: keep them so
    model.train(training)  # new layers are created in training mode (dropout on)
    result = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"adapter tensors that match no injected LoRA layer: {result.unexpected_keys[:5]}")
    model.requires_grad_(False)  # a loaded adapter is for inference; training resumes from checkpoints


def base_name(peft_key: str) -> str:
    """The base model's parameter name for a PEFT key of a trained bias."""
    return peft_key.replace(".base_layer.", ".")


def split_by_layer(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {"lora_A.weight": A, "lora_B.weight": B, ...}}`` from PEFT keys."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for part in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector"):
            if key.endswith("." + part):
                layers.setdefault(key[: -len(part) - 1], {})[part] = tensor
    return layers
