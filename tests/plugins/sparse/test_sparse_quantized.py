"""Sparse masks on a quantized base: the values train beside the quantized weight, their gradient is
the masked gradient of the dequantized model, and the adapter fuses into the float base."""

from __future__ import annotations

import copy

import pytest
import torch
from method_harness import base_model, batches, logits, train

from plugins.sparse import SparseMask
from plugins.sparse.layer import SparseMaskQuantizedLinear
from zoo.prepare import prepare
from zoo.quantization import dequantize, quantize

BATCH = batches(count=1, seed=17)[0]


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_values_gradient_is_the_masked_gradient_of_the_dequantized_model(kind, grad_mode):
    model = quantize(base_model(), kind)
    reference = dequantize(copy.deepcopy(model)).requires_grad_(True)
    prepare(model, SparseMask(density=0.05, strategy="random", grad_mode=grad_mode), seed=0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseMaskQuantizedLinear)}
    assert len(layers) == 14  # the seven projections of both blocks
    torch.testing.assert_close(logits(model, BATCH), logits(reference, BATCH), rtol=0, atol=1e-5)
    model(**BATCH).loss.backward()
    reference(**BATCH).loss.backward()
    for name, layer in layers.items():
        expected = reference.get_submodule(name).weight.grad.reshape(-1)[layer.mask_indices.long()]
        torch.testing.assert_close(layer.mask_values.grad, expected, rtol=1e-4, atol=1e-6)


def test_adapter_fused_into_the_dequantized_base_gives_the_trained_model():
    trained = train(SparseMask(density=0.05, strategy="weight"), quantization="nf4")
    fused = dequantize(quantize(base_model(), "nf4"))
    trained.hooks.ftzoo_fuse_adapter(model=fused, adapter=trained.adapter, scale=1.0)
    torch.testing.assert_close(logits(fused, BATCH), logits(trained.model, BATCH), rtol=0, atol=1e-5)
    # and into the unquantized base, where only the masked entries change
    base, plain = base_model(), base_model()
    trained.hooks.ftzoo_fuse_adapter(model=base, adapter=trained.adapter, scale=1.0)
    changed = sum(int((base.get_parameter(n) != plain.get_parameter(n)).sum()) for n, _ in plain.named_parameters())
    assert 0 < changed <= sum(t.numel() for k, t in trained.adapter.tensors.items() if k.endswith("mask_values"))


def test_gradient_strategy_is_refused_on_a_quantized_base():
    model = quantize(base_model(), "nf4")
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="'gradient' needs weight gradients"):
        prepare(model, SparseMask(strategy="gradient"), calibration_batches=lambda: iter(batches(count=1)))
    assert [type(m) for m in model.modules()] == kinds
