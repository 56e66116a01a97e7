"""S²FT on a quantized base (plugins.s2ft.quantized): the update's gradient is the masked gradient of
the dequantized model, only the selected block changes, and the adapter is an ordinary S²FT
adapter that fuses into the unquantized base and into the dequantized weights."""

from __future__ import annotations

import copy

import pytest
import torch
from method_harness import base_model, batches, logits, train
from torch import nn

from plugins.s2ft import S2FT
from plugins.s2ft.adapter import DELTA_SUFFIX, structured_updates
from plugins.s2ft.quantized import S2FTQuantizedLinear
from zoo import load_adapter, save_adapter
from zoo.prepare import prepare
from zoo.quantization import dequantize, dequantized_weight, layer_quantization, quantize

BATCH = batches(count=1, seed=7)[0]
ALL_ROLES = dict(o_heads=2, v_heads=1, down_channels=5, up_channels=3, gate_channels=2)


def dequantized_copy(quantized: nn.Module) -> nn.Module:
    """The quantized base as a float model (its linear layers hold ``Q(W)``), not rewritten."""
    return dequantize(copy.deepcopy(quantized))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2"])  # qwen2: V rows with a bias
def test_update_gradient_is_the_masked_gradient_of_the_dequantized_model(kind, arch):
    model = quantize(base_model(arch), kind)
    reference = dequantized_copy(model).requires_grad_(True)
    prepare(model, S2FT(**ALL_ROLES), seed=0)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, S2FTQuantizedLinear)}
    assert {name.rsplit(".", 1)[1] for name in layers} == {"o_proj", "v_proj", "down_proj", "up_proj", "gate_proj"}
    torch.testing.assert_close(logits(model, BATCH), logits(reference, BATCH), rtol=0, atol=1e-5)  # zero at init
    model(**BATCH).loss.backward()
    reference(**BATCH).loss.backward()
    biases = 0
    for name, layer in layers.items():
        full = reference.get_submodule(name)
        expected = full.weight.grad.index_select(layer.dim, layer.s2ft_index)  # [k, in] or [out, k]
        torch.testing.assert_close(layer.s2ft_weight.grad, expected, rtol=1e-4, atol=1e-6)
        if layer.s2ft_bias is not None:
            torch.testing.assert_close(layer.s2ft_bias.grad, full.bias.grad[layer.s2ft_index], rtol=1e-4, atol=1e-6)
            biases += 1
    assert (biases > 0) == (arch == "qwen2")  # qwen2's V projections have a bias, which trains with its rows


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_training_changes_only_the_selected_block_and_never_the_quantized_weights(kind):
    model = quantize(base_model(), kind)
    packed = {name: p.detach().clone() for name, p in model.named_parameters()}
    trained = train(S2FT(**ALL_ROLES), quantization=kind)
    after = dict(trained.model.named_parameters())
    for name, original in packed.items():  # every base tensor, quantized or not, is as it was
        moved = name.replace("_proj.weight", "_proj.base_layer.weight").replace("_proj.bias", "_proj.base_layer.bias")
        current = after[name] if name in after else after[moved]
        assert torch.equal(current.detach(), original), name
    # the trained model is Q(W) + the update: dense, the update is zero outside the selected rows/columns
    base = dequantized_copy(model)
    fused = copy.deepcopy(base)
    trained.hooks.ftzoo_fuse_adapter(model=fused, adapter=trained.adapter, scale=1.0)
    changed = 0
    for update in structured_updates(trained.adapter):
        diff = fused.get_parameter(update.param) - base.get_parameter(update.param)
        outside = torch.ones(diff.shape[update.dim], dtype=torch.bool)
        outside[update.indices] = False
        assert not diff.index_select(update.dim, outside.nonzero().squeeze(1)).any(), update.param
        changed += int(diff.index_select(update.dim, update.indices).ne(0).any())
    assert changed == len(structured_updates(trained.adapter))  # every selected slice trained
    # int8 in eval mode quantizes the activations too (LLM.int8()); in train mode it computes with Q(W)
    model = trained.model.train() if kind == "int8" else trained.model
    torch.testing.assert_close(logits(fused, BATCH), logits(model, BATCH), rtol=0, atol=1e-5)


def test_adapter_is_an_s2ft_adapter_of_the_unquantized_base(tmp_path):
    float_run = train(S2FT(**ALL_ROLES))
    nf4_run = train(S2FT(**ALL_ROLES), quantization="nf4")
    assert nf4_run.adapter.selection == float_run.adapter.selection  # the same units, in base coordinates
    assert nf4_run.adapter.base == float_run.adapter.base
    assert {k: v.shape for k, v in nf4_run.adapter.tensors.items()} == {
        k: v.shape for k, v in float_run.adapter.tensors.items()
    }
    assert all(k.endswith(DELTA_SUFFIX) for k in nf4_run.adapter.tensors)
    loaded = load_adapter(save_adapter(nf4_run.adapter, tmp_path / "adapter", hooks=nf4_run.hooks))
    # onto the unquantized base: fusing adds the update into its slices and unfusing restores it exactly
    base = base_model()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    undo = nf4_run.hooks.ftzoo_fuse_adapter(model=base, adapter=loaded, scale=1.0)
    for update in structured_updates(loaded):
        got = base.get_parameter(update.param).index_select(update.dim, update.indices)
        want = original[update.param].index_select(update.dim, update.indices) + update.delta
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    nf4_run.hooks.ftzoo_unfuse_adapter(model=base, adapter=loaded, undo=undo)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in original.items())


def test_column_roles_save_only_the_selected_input_columns():
    """The partial backward keeps its savings beside a quantized weight: an O/down update saves
    x[..., S] only, and the bitsandbytes matmul saves no activation."""
    model = quantize(base_model(), "nf4")
    prepare(model, S2FT(o_heads=1, down_channels=3), seed=0)
    layer = next(m for n, m in model.named_modules() if n.endswith("down_proj") and isinstance(m, S2FTQuantizedLinear))
    x = torch.randn(2, 12, layer.in_features, requires_grad=True)
    saved = {}

    def pack(t):
        saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    keep = {p.untyped_storage()._cdata for p in layer.parameters()} | {layer.s2ft_index.untyped_storage()._cdata}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    activations = sum(n for key, n in saved.items() if key not in keep)
    assert activations == 2 * 12 * len(layer.s2ft_index) * 4  # [tokens, k] float32: the selected channels only
    assert layer.s2ft_weight.grad is not None and layer_quantization(layer.base_layer) == "nf4"


def test_bfloat16_base_trains_a_bfloat16_update():
    trained = train(S2FT(o_heads=1, down_channels=3), dtype=torch.bfloat16, quantization="nf4")
    layers = [m for m in trained.model.modules() if isinstance(m, S2FTQuantizedLinear)]
    assert layers and all(m.s2ft_weight.dtype == torch.bfloat16 for m in layers)
    assert all(t.dtype == torch.float32 and t.abs().sum() > 0 for t in trained.adapter.tensors.values())
    assert dequantized_weight(layers[0].base_layer).dtype == torch.bfloat16
