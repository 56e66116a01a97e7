"""A quantized frozen base: its linear weights stored in 4 or 8 bits, through bitsandbytes.

``--model.quantization nf4|int8`` loads the base as usual (float weights), takes its
identity (:class:`zoo.adapter.BaseModelInfo`, so that adapters trained on the quantized base
belong to the unquantized one too), then replaces every ``nn.Linear`` except the output head
by the bitsandbytes layer that transformers' ``BitsAndBytesConfig`` and peft's QLoRA use::

    nf4:  bnb.nn.Linear4bit     weight: Params4bit, NF4 codes packed two per byte [out·in/2, 1] uint8
                                + one float32 absmax per block of 64 values (quant_state)
    int8: bnb.nn.Linear8bitLt   weight: Int8Params [out, in] int8 + one float32 scale per row (SCB)

Embeddings, norms and the output head stay in the model's dtype, as transformers leaves
them (``llm_int8_skip_modules`` defaults to the output head). The matmuls run in the
model's dtype (``compute_dtype``), dequantizing on the fly; the bitsandbytes layers compute
the input gradient through the same dequantizing matmul and no weight gradient.

Why bitsandbytes: it is what peft's QLoRA is built on (peft's LoRA/DoRA layers wrap
``Linear4bit``/``Linear8bitLt`` directly, and ``PeftModel.from_pretrained`` loads PEFT
adapters onto them), and its recent PyPI wheels carry a CPU backend: NF4 and int8 forward
and backward run on CPU in float32 and bfloat16 (checked with bitsandbytes 0.50.2 by
``tests/zoo/test_quantization.py``; the ``quantization`` extra installs it). torchao's ``NF4Tensor`` and optimum-quanto also run on
CPU, but peft's QLoRA path and its adapters' loading go through bitsandbytes.

A method that cannot train beside quantized weights (full fine-tuning trains the weights
themselves) says so through ``ftzoo_quantized_base`` (:mod:`zoo.hookspecs`), and the core
refuses before the model is loaded (:func:`check_method`).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

Quantization = Literal["none", "nf4", "int8"]
QUANTIZATIONS: tuple[str, ...] = ("none", "nf4", "int8")
SKIP_MODULES = ("lm_head",)
"""Linear layers left in the model's dtype (transformers' default for bitsandbytes)."""


class QuantizationError(RuntimeError):
    """The base cannot be quantized as asked, or a method cannot train on a quantized base."""


def bnb() -> Any:
    """The ``bitsandbytes`` module, or a message that says how to install it."""
    quiet = logging.getLogger("bitsandbytes")  # at import, on CPUs with AVX512-BF16, it warns that the optional
    level = quiet.level  # `kernels` package (a hub download) is absent; its own kernels are used instead
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as err:
        raise QuantizationError(
            "a quantized base (--model.quantization nf4|int8) needs bitsandbytes: pip install 'ftzoo[quantization]' "
            f"(or pip install 'bitsandbytes>=0.48') ({err})"
        ) from err
    finally:
        quiet.setLevel(level)
    return bitsandbytes


def quantize(model: nn.Module, quantization: Quantization, skip: tuple[str, ...] = SKIP_MODULES) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (but ``skip``) by its bitsandbytes layer, in place.

    The base must be frozen and not yet rewritten by a method. The layer's compute dtype is
    the dtype of the weight it replaces; ``quantization="none"`` returns the model unchanged.

    Args:
        model: a freshly loaded base model.
        quantization: ``"nf4"`` (4-bit NormalFloat, blocks of 64, as QLoRA) or ``"int8"``
            (LLM.int8() with row-wise scales and no outlier threshold).
        skip: module names (or name endings) left in float.

    Returns:
        ``model``, with ``is_loaded_in_4bit`` / ``is_loaded_in_8bit`` set as transformers sets
        them (peft reads these to wrap bitsandbytes layers).

    Raises:
        QuantizationError: an unknown ``quantization``, bitsandbytes missing, or a model
            already quantized.
    """
    if quantization not in QUANTIZATIONS:
        raise QuantizationError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "none":
        return model
    if quantization_of(model) != "none":
        raise QuantizationError(f"the model is already quantized ({quantization_of(model)})")
    lib = bnb()
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not any(name == s or name.endswith("." + s) for s in skip)
    ]
    for name, linear in targets:
        model.set_submodule(name, _quantized_linear(lib, linear, quantization))
    model.is_loaded_in_4bit = quantization == "nf4"
    model.is_loaded_in_8bit = quantization == "int8"
    model.ftzoo_quantization = quantization
    return model


def _quantized_linear(lib: Any, linear: nn.Linear, quantization: str) -> nn.Module:
    weight, device = linear.weight.detach(), linear.weight.device
    if device.type == "meta":
        return _meta_quantized_linear(lib, linear, quantization)
    has_bias = linear.bias is not None
    if quantization == "nf4":
        layer = lib.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=weight.dtype,
            quant_type="nf4", device="meta",
        )
        layer.weight = lib.nn.Params4bit(weight.to("cpu"), requires_grad=False, quant_type="nf4", blocksize=64)
    else:
        layer = lib.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=0.0,
            device="meta",
        )
        layer.weight = lib.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    _same_kernel_in_eval(layer)
    layer = layer.to(device)  # bitsandbytes quantizes when the weight is moved to its device
    layer.weight.requires_grad_(False)
    return layer


def _meta_quantized_linear(lib: Any, linear: nn.Linear, quantization: str) -> nn.Module:
    """The layer :func:`_quantized_linear` makes, on the ``meta`` device: every tensor of the
    shape and dtype that bitsandbytes gives (no values), for counting bytes without weights
    (``tools/bench/train.py``). NF4 as bitsandbytes stores it by default: packed codes
    [out·in/2, 1] uint8, absmax per 64 values quantized to uint8 (``compress_statistics``),
    with a float32 absmax per 256 of those, the two code books and an offset."""
    out_f, in_f, dtype = linear.out_features, linear.in_features, linear.weight.dtype
    has_bias = linear.bias is not None
    n = out_f * in_f
    with torch.device("meta"):
        if quantization == "nf4":
            blocks = -(-n // 64)
            state2 = lib.functional.QuantState(
                absmax=torch.empty(-(-blocks // 256), dtype=torch.float32), code=torch.empty(256), blocksize=256,
                dtype=torch.float32,
            )
            state = lib.functional.QuantState(
                absmax=torch.empty(blocks, dtype=torch.uint8), shape=torch.Size([out_f, in_f]), code=torch.empty(16),
                blocksize=64, quant_type="nf4", dtype=dtype, offset=torch.empty(()), state2=state2,
            )
            layer = lib.nn.Linear4bit(in_f, out_f, bias=has_bias, compute_dtype=dtype, quant_type="nf4")
            layer.weight = lib.nn.Params4bit(
                torch.empty((n + 1) // 2, 1, dtype=torch.uint8), requires_grad=False, quant_state=state, blocksize=64,
                quant_type="nf4", bnb_quantized=True,
            )
        else:
            layer = lib.nn.Linear8bitLt(in_f, out_f, bias=has_bias, has_fp16_weights=False, threshold=0.0)
            layer.weight = lib.nn.Int8Params(
                torch.empty(out_f, in_f, dtype=torch.int8), requires_grad=False, has_fp16_weights=False
            )
            layer.weight.SCB = torch.empty(out_f, dtype=torch.float32)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    _same_kernel_in_eval(layer)
    return layer


def _same_kernel_in_eval(layer: nn.Module) -> None:
    """Keep one NF4 matmul for training and evaluation. On CPUs with AVX512-BF16,
    ``Linear4bit`` repacks its weight in place the first time it runs in eval mode without
    gradients, into a CPU inference layout with bfloat16 block scales: the evaluated model
    would then differ from the trained one (by ~1e-3 in the logits), ``dequantize_4bit`` would
    no longer read the weight, and the repacking fails for widths that are not a multiple of 64."""
    if hasattr(layer, "support_avx512bf16_for_cpu"):
        layer.support_avx512bf16_for_cpu = False


def quantization_of(model: nn.Module) -> str:
    """``"nf4"``, ``"int8"`` or ``"none"``: how the linear weights of ``model`` are stored."""
    for module in model.modules():
        kind = layer_quantization(module)
        if kind != "none":
            return kind
    return "none"


def layer_quantization(module: nn.Module) -> str:
    """``"nf4"`` for a bitsandbytes 4-bit layer, ``"int8"`` for an 8-bit one, else ``"none"``."""
    weight = getattr(module, "weight", None)
    kind = type(weight).__name__
    if kind == "Params4bit":
        return "nf4"
    if kind == "Int8Params":
        return "int8"
    return "none"


def is_quantized_linear(module: nn.Module) -> bool:
    """A bitsandbytes linear layer (not wrapped)."""
    return layer_quantization(module) != "none" and isinstance(module, nn.Linear)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight ``[out, in]`` a bitsandbytes layer computes with (a new tensor), in
    its compute dtype; a plain linear layer's own weight."""
    kind = layer_quantization(module)
    if kind == "none":
        return module.weight.detach()
    lib = bnb()
    weight = module.weight
    if kind == "nf4":
        dtype = getattr(module, "compute_dtype", None) or torch.float32
        return lib.functional.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    scale = weight.SCB.to(torch.float32)  # [out]: absmax of each row / 127
    return weight.data.to(torch.float32) * scale[:, None] / 127.0


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors a quantized layer holds outside its parameters and buffers (NF4 block scales
    and code book, int8 row scales), for counting the bytes of the frozen base."""
    out = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        while state is not None:
            out += [t for t in (state.absmax, state.code, getattr(state, "offset", None)) if isinstance(t, torch.Tensor)]
            state = getattr(state, "state2", None)
        scb = getattr(weight, "SCB", None)
        if isinstance(scb, torch.Tensor):
            out.append(scb)
    return out


def check_method(hooks: Any, what: str, quantization: str) -> None:
    """Refuse, before the base is loaded or changed, a method that cannot train on a base
    quantized as ``quantization`` (it answers ``ftzoo_quantized_base`` with ``False``).

    Args:
        hooks: the method's hook relay (:func:`zoo.plugins.method_hooks`).
        what: the method's name, for the message.
        quantization: ``"none"``, ``"nf4"`` or ``"int8"``.

    Raises:
        QuantizationError: naming the method and what to do instead.
    """
    if quantization == "none" or hooks.ftzoo_quantized_base(quantization=quantization):
        return
    raise QuantizationError(
        f"method {what!r} cannot train on a {quantization}-quantized base: it would have to change the quantized "
        "weights themselves, which take no gradient. Nothing was changed. Load the base unquantized "
        "(--model.quantization none), or choose a method that trains beside the quantized weights "
        "(python -m zoo plugins lists the installed methods)"
    )


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear layer, quantized (packed weight) or not."""
    if layer_quantization(module) != "none":
        return module.out_features, module.in_features
    return tuple(module.weight.shape)


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every bitsandbytes layer of ``model`` by an ``nn.Linear`` holding its dequantized
    weight ``Q(W)``, in place: the float model that computes what the quantized one computes,
    into which adapters fuse as into any float base (:func:`zoo.inference.adapters.fuse_into`).

    Returns:
        ``model``, no longer marked as quantized.
    """
    for name, module in list(model.named_modules()):
        if not is_quantized_linear(module):
            continue
        weight = dequantized_weight(module)
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            linear.bias = nn.Parameter(module.bias.detach().to(weight.dtype), requires_grad=False)
        model.set_submodule(name, linear)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "ftzoo_quantization"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model
