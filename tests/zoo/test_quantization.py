"""A quantized frozen base (zoo.quantization): bitsandbytes layers on CPU, their byte count on the
meta device, the refusal of methods that cannot train on it, before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
from method_harness import base_model, batches, logits
from torch import nn

from plugins.full import FullFineTuning
from plugins.s2ft import S2FT
from zoo.loading import load_model
from zoo.module import FineTuneModule
from zoo.prepare import prepare
from zoo.quantization import (
    QuantizationError,
    dequantize,
    dequantized_weight,
    layer_quantization,
    quantization_of,
    quantize,
    state_tensors,
)

BATCH = batches(count=1, seed=5)[0]


def dequantized_reference(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose linear weights are the quantized ones, dequantized."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if layer_quantization(module) != "none":
                reference.get_submodule(name).weight.copy_(dequantized_weight(module))
    return reference


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_base_computes_its_dequantized_weights_forward_and_backward(kind, dtype):
    model = base_model(dtype=dtype)
    quantized = quantize(copy.deepcopy(model), kind)
    assert quantization_of(quantized) == kind and quantization_of(model) == "none"
    assert layer_quantization(quantized.model.layers[0].mlp.down_proj) == kind
    assert type(quantized.lm_head) is nn.Linear and quantized.lm_head.weight.dtype == dtype  # the head stays float
    reference = dequantized_reference(model, quantized)
    tol = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.02}
    torch.testing.assert_close(logits(quantized, BATCH), logits(reference, BATCH), **tol)
    # the input gradient flows through the dequantizing matmul: a norm's gradient below every linear layer
    grads = []
    for m in (quantized, reference):
        norm = m.model.layers[0].input_layernorm.weight.requires_grad_(True)
        m(**BATCH).loss.backward()
        grads.append(norm.grad.float())
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_nf4_is_what_qlora_stores_four_bits_per_weight():
    model = quantize(base_model(), "nf4")
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.uint8 and weight.numel() == 96 * 64 // 2  # two codes per byte
    assert weight.quant_state.quant_type == "nf4" and weight.quant_state.blocksize == 64


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_meta_layers_have_the_bytes_of_real_ones(kind):
    """The benchmark counts bytes on the meta device: every tensor must match a real quantization."""
    linear = nn.Linear(640, 1280, bias=True)
    real = quantize(nn.Sequential(copy.deepcopy(linear)), kind)
    with torch.device("meta"):
        fake = nn.Sequential(nn.Linear(640, 1280, bias=True))
    quantize(fake, kind)

    def layout(model):
        params = [(tuple(p.shape), p.dtype) for p in model.parameters()]
        states = [(tuple(t.shape), t.dtype) for t in state_tensors(model)]
        return params, states

    assert layout(fake) == layout(real)
    assert fake[0].weight.device.type == "meta"
    x = torch.empty(2, 3, 640, device="meta")
    assert fake(x).shape == (2, 3, 1280)


def test_dequantize_gives_the_float_model_that_computes_the_same():
    model = base_model()
    quantized = quantize(copy.deepcopy(model), "nf4")
    expected = logits(quantized, BATCH)
    dequantize(quantized)
    assert quantization_of(quantized) == "none" and not hasattr(quantized, "is_loaded_in_4bit")
    assert all(type(m) is nn.Linear for m in quantized.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(logits(quantized, BATCH), expected, rtol=0, atol=1e-5)


def test_unknown_quantization_and_double_quantization_are_refused():
    with pytest.raises(QuantizationError, match="one of"):
        quantize(base_model(), "fp8")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize(quantize(base_model(), "nf4"), "int8")


def snapshot(model: nn.Module) -> dict:
    """Everything a rewrite could change: module types, parameter flags and bytes."""
    state = {name: (type(m).__name__,) for name, m in model.named_modules()}
    for name, p in model.named_parameters():
        state[name] = (p.dtype, tuple(p.shape), p.requires_grad, p.detach().clone())
    return state


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        other = after[key]
        assert value[:-1] == other[:-1] if len(value) > 1 else value == other, key
        if len(value) > 1:
            assert torch.equal(value[-1], other[-1]), key


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_full_fine_tuning_is_refused_on_a_quantized_base_and_the_model_is_unchanged(kind):
    model = quantize(base_model(), kind)
    before = snapshot(model)
    with pytest.raises(QuantizationError, match=rf"method 'full' cannot train on a {kind}-quantized base"):
        prepare(model, FullFineTuning())
    assert_same(before, snapshot(model))


def test_s2ft_gradient_strategy_is_refused_on_a_quantized_base_and_the_model_is_unchanged():
    model = quantize(base_model(), "nf4")
    before = snapshot(model)
    with pytest.raises(ValueError, match="'gradient' needs weight gradients"):
        prepare(model, S2FT(strategy="gradient"), calibration_batches=lambda: iter(batches(count=1)))
    assert_same(before, snapshot(model))


def test_the_module_refuses_full_before_loading_the_base(monkeypatch, tiny_llama_dir):
    def no_load(*args, **kwargs):
        raise AssertionError("the base was loaded before the method was refused")

    monkeypatch.setattr("zoo.module.load_model", no_load)
    module = FineTuneModule(model=str(tiny_llama_dir), method=FullFineTuning(), quantization="nf4")
    with pytest.raises(QuantizationError, match="--model.quantization none"):
        module.configure_model()
    assert module.model is None


def test_the_module_loads_a_quantized_base_with_the_unquantized_identity(tiny_llama_dir):
    method = S2FT(o_heads=1, down_channels=2)
    selection = method.ftzoo_select_parameters(model=load_model(str(tiny_llama_dir)), calibration_batches=None, seed=0)
    plain = FineTuneModule(model=str(tiny_llama_dir), method=method)
    quantized = FineTuneModule(model=str(tiny_llama_dir), method=S2FT(o_heads=1, down_channels=2), quantization="nf4")
    plain._build(selection=selection)  # as configure_model does, with the selection a trainer would broadcast
    quantized._build(selection=selection)
    assert quantization_of(quantized.model) == "nf4" and quantization_of(plain.model) == "none"
    assert quantized.base_info == plain.base_info  # adapters of either belong to the same base
    assert quantized.base_parameter_count == plain.base_parameter_count


@pytest.mark.slow
def test_fit_on_an_nf4_base_then_test_with_its_adapter(tiny_llama_dir, tmp_path):
    """``lightning fit --model.quantization nf4`` writes an S²FT adapter of the unquantized base;
    ``lightning test`` with it on the NF4 base evaluates the trained model (Q(W) + update)."""
    from method_harness import fit_args

    from zoo.cli import build_cli

    extra = ["--model.quantization", "nf4", "--model.method.init_args.o_heads", "1"]
    cli = build_cli(fit_args(tiny_llama_dir, tmp_path, 3, "s2ft", *extra))
    trained = cli.model.model.eval()
    assert quantization_of(trained) == "nf4"
    folder = tmp_path / "run" / "version_0" / "adapter"
    args = fit_args(tiny_llama_dir, tmp_path / "test", 3, "s2ft", *extra)
    args = ["test", *args[1:], "--model.adapter", str(folder), "--data.num_test", "4"]
    tested = build_cli(args).model.model.eval()
    assert quantization_of(tested) == "none"  # the adapter is fused into the dequantized weights
    torch.testing.assert_close(logits(tested, BATCH), logits(trained, BATCH), rtol=0, atol=1e-5)
