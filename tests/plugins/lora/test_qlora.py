"""LoRA and DoRA on a quantized base (QLoRA): PEFT's bitsandbytes layers, PEFT-format adapters that
PeftModel.from_pretrained loads onto the quantized base, and deltas that fuse into the float base."""

from __future__ import annotations

import copy

import pytest
import torch
from method_harness import base_model, batches, logits, train
from peft import PeftModel
from peft.tuners.lora import bnb as peft_bnb

from plugins.lora import DoRA, LoRA
from zoo import save_adapter
from zoo.prepare import prepare
from zoo.quantization import dequantize, quantize
from zoo.targets import UnsupportedWeightError

BATCH = batches(count=1, seed=13)[0]
LAYERS = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}


@pytest.mark.parametrize(("kind", "method"), [("nf4", LoRA), ("int8", LoRA), ("nf4", DoRA)])
def test_peft_wraps_the_bitsandbytes_layers_and_its_adapter_loads_in_peft(kind, method, tmp_path):
    trained = train(method(r=4, alpha=8, dropout=0.0), quantization=kind)
    q_proj = trained.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, getattr(peft_bnb, LAYERS[kind]))  # peft's QLoRA layer around the quantized weight
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    peft_model = PeftModel.from_pretrained(quantize(base_model(), kind), folder)
    torch.testing.assert_close(logits(peft_model, BATCH), logits(trained.model, BATCH), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", [LoRA, DoRA])
def test_qlora_deltas_fused_into_the_dequantized_base_give_the_trained_model(method):
    trained = train(method(r=4, alpha=8, dropout=0.0), quantization="nf4")
    fused = dequantize(quantize(base_model(), "nf4"))
    trained.hooks.ftzoo_fuse_adapter(model=fused, adapter=trained.adapter, scale=1.0)
    torch.testing.assert_close(logits(fused, BATCH), logits(trained.model, BATCH), rtol=0, atol=1e-5)


def test_a_base_mutating_init_is_refused_on_a_quantized_base_and_the_model_is_unchanged():
    model = quantize(base_model(), "nf4")
    before = copy.deepcopy(model.state_dict())
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(UnsupportedWeightError, match="rewrites the base weights"):
        prepare(model, LoRA(r=4, alpha=8, init_lora_weights="pissa"))
    assert [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items() if isinstance(v, torch.Tensor))


def test_dora_on_an_int8_base_is_refused_and_the_model_is_unchanged():
    model = quantize(base_model(), "int8")
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(UnsupportedWeightError, match="DoRA on an int8 base"):
        prepare(model, DoRA(r=4, alpha=8))
    assert [type(m) for m in model.modules()] == kinds
