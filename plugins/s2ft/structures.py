"""The coupled structures of a decoder block, per architecture family.

S²FT trains whole *structures*: a unit whose weights live in two matrices that must be
permuted together (co-permuted) to keep the model's function.

Attention (one block)::

    x ──► q_proj ─ rows of query head h ─┐
      ──► k_proj ─ rows of kv head g ────┼─► attention of head h ─► columns of head h in o_proj ─► y
      ──► v_proj ─ rows of kv head g ────┘
                          g = h // group_size,   group_size = num_heads / num_kv_heads

    A query head h couples rows [h·d, (h+1)·d) of Q with columns [h·d, (h+1)·d) of O
    (d = head_dim); a kv head g couples rows [g·d, (g+1)·d) of K and of V with the query
    heads of its group. Trainable units: O by query head (columns), V by kv head (rows).

FFN (SwiGLU)::

    x ──► gate_proj row c ─► act ─┐
      ──► up_proj   row c ───────(×)─► channel c ─► column c of down_proj ─► y

    A channel c couples row c of gate and up with column c of down. Trainable units:
    up / gate rows and down columns, one channel each.

A family is described by a :class:`Layout` (where the projections live in a block).
Llama, Mistral and Qwen2 are listed; any other decoder whose blocks expose separate
``q/k/v/o`` and ``gate/up/down`` linear projections (and no per-head parameters that a
permutation would break) is accepted under the same layout. Everything else is refused
with :class:`UnsupportedArchitectureError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo import layer_quantization

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


class UnsupportedArchitectureError(ValueError):
    """The model's blocks do not expose the coupled structures S²FT needs."""


@dataclass(frozen=True)
class Layout:
    """Attribute names of the coupled projections inside one decoder block."""

    attention: str = "self_attn"
    mlp: str = "mlp"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"

    def path(self, projection: str) -> str:
        """``"self_attn.o_proj"`` for ``"o"``: the projection's path inside a block."""
        parent = self.attention if projection in ("q", "k", "v", "o") else self.mlp
        return f"{parent}.{getattr(self, projection)}"


FAMILIES: dict[str, Layout] = {
    # q/k/v/o without bias, SwiGLU gate/up/down; GQA when num_key_value_heads < num_attention_heads.
    "llama": Layout(),
    # as Llama (sliding-window attention does not care about head order).
    "mistral": Layout(),
    # as Llama, but q/k/v carry a bias: bias entries move with their rows.
    "qwen2": Layout(),
}
"""Known families by ``config.model_type``."""

NEEDS = (
    "S²FT needs decoder blocks with separate q/k/v/o attention projections and gate/up/down FFN "
    f"projections (known families: {', '.join(sorted(FAMILIES))})."
)


@dataclass
class Block:
    """One decoder block and the sizes of its coupled structures."""

    index: int
    prefix: str
    """Module name of the block, e.g. ``"model.layers.3"``."""
    module: nn.Module
    layout: Layout
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per kv head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads

    def linear(self, projection: str) -> nn.Module:
        """The projection module (``"o"`` → ``self_attn.o_proj``)."""
        return self.module.get_submodule(self.layout.path(projection))

    def set_linear(self, projection: str, module: nn.Module) -> None:
        """Replace a projection module in place."""
        parent, _, attr = self.layout.path(projection).rpartition(".")
        setattr(self.module.get_submodule(parent), attr, module)

    def module_name(self, projection: str) -> str:
        """Full module name, e.g. ``"model.layers.3.self_attn.o_proj"``."""
        return f"{self.prefix}.{self.layout.path(projection)}"


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's list of blocks and its module name (``"model.layers"``)."""
    names = {id(module): name for name, module in model.named_modules()}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or id(layers) not in names:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise UnsupportedArchitectureError(
            f"S²FT does not support model_type {model_type!r} ({type(model).__name__}): it found no `layers` "
            f"list of decoder blocks. {NEEDS}"
        )
    return names[id(layers)], layers


def coupled_blocks(model: nn.Module) -> list[Block]:
    """Describe every decoder block of ``model``.

    Raises:
        UnsupportedArchitectureError: a block lacks one of the coupled projections, a
            projection is not a plain linear layer, the sizes disagree with the config, or
            the attention has per-head parameters that a head permutation would break.
    """
    config = model.config
    model_type = getattr(config, "model_type", "?")
    layout = FAMILIES.get(model_type, Layout())
    prefix, layers = decoder_layers(model)
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    blocks = []
    for index, module in enumerate(layers):
        block = Block(
            index, f"{prefix}.{index}", module, layout, num_heads, num_kv_heads, head_dim, config.intermediate_size
        )
        _check_block(block, model_type)
        blocks.append(block)
    return blocks


def _check_block(block: Block, model_type: str) -> None:
    missing = [block.layout.path(p) for p in PROJECTIONS if _get(block.module, block.layout.path(p)) is None]
    if missing:
        present = sorted(name for name, m in block.module.named_modules() if isinstance(m, nn.Linear))
        raise UnsupportedArchitectureError(
            f"S²FT does not support model_type {model_type!r}: its decoder blocks lack {', '.join(missing)} "
            f"(they have linear layers {', '.join(present) or 'none'}). {NEEDS}"
        )
    if block.num_heads % block.num_kv_heads:
        raise UnsupportedArchitectureError(
            f"{model_type}: {block.num_heads} query heads do not split into {block.num_kv_heads} kv groups"
        )
    hd, inter = block.head_dim, block.intermediate_size
    expected = {
        "q": (block.num_heads * hd, None),
        "k": (block.num_kv_heads * hd, None),
        "v": (block.num_kv_heads * hd, None),
        "o": (None, block.num_heads * hd),
        "gate": (inter, None),
        "up": (inter, None),
        "down": (None, inter),
    }
    for projection, (out_features, in_features) in expected.items():
        linear = block.linear(projection)
        weight = getattr(linear, "weight", None)
        if layer_quantization(linear) != "none":  # bitsandbytes: packed weight, the layer knows its shape
            weight = torch.empty(linear.out_features, linear.in_features, device="meta")
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:  # torch.ao quantized: a method
            raise UnsupportedArchitectureError(
                f"{block.module_name(projection)} is a {type(linear).__name__} without a 2-D weight; S²FT "
                "needs plain linear projections (quantized or fused layers are not supported)"
            )
        out_ok = out_features is None or weight.shape[0] == out_features
        in_ok = in_features is None or weight.shape[1] == in_features
        if not (out_ok and in_ok):
            raise UnsupportedArchitectureError(
                f"{block.module_name(projection)} has weight shape {list(weight.shape)}, which does not match "
                f"{block.num_heads} heads / {block.num_kv_heads} kv heads of {hd} and intermediate size {inter}"
            )
    if model_type not in FAMILIES:
        _check_no_per_head_parameters(block, model_type)


def _check_no_per_head_parameters(block: Block, model_type: str) -> None:
    """Refuse attention parameters outside q/k/v/o that are not shared by all heads.

    A per-head parameter (e.g. attention sinks of shape ``[num_heads]``) would have to be
    permuted too; a norm over ``head_dim`` (Qwen3's q_norm) is shared and harmless.
    """
    attention = block.module.get_submodule(block.layout.attention)
    own = {getattr(block.layout, p) for p in ("q", "k", "v", "o")}
    for name, param in attention.named_parameters():
        if name.split(".")[0] in own:
            continue
        if param.numel() != block.head_dim:
            raise UnsupportedArchitectureError(
                f"S²FT does not support model_type {model_type!r}: attention parameter "
                f"{block.prefix}.{block.layout.attention}.{name} (shape {list(param.shape)}) may depend on the "
                "head order, so permuting heads could change the model's outputs"
            )


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
