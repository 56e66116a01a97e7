"""Fault 5: a base whose target weights are quantized or not floating point.

Every method checks every module or parameter it will change before it changes any, so a
refusal leaves the model exactly as it was (same modules, same tensors, nothing trainable).
The bad weight sits in layer 1, after layer 0 which the old rewrites had already changed.

| case (every method: s2ft, sparse, lora, full)  | what the user sees                                   | model after |
| ---------------------------------------------- | ---------------------------------------------------- | ----------- |
| an ``int8`` 2-D projection weight              | UnsupportedWeightError: "... o_proj.weight has dtype | unchanged   |
|                                                | torch.int8 ... the model is left unchanged"          |             |
| a ``float8_e4m3fn`` projection weight          | the same, naming torch.float8_e4m3fn                 | unchanged   |
| a torch.ao dynamically quantized projection    | a ValueError naming the layer as quantized (no       | unchanged   |
|                                                | ``'function' object has no attribute 'ndim'``)       |             |
"""

from __future__ import annotations

import pytest
import torch
from method_harness import base_model, batches
from torch import nn

from plugins.full import FullFineTuning
from plugins.lora import LoRA
from plugins.s2ft import S2FT
from plugins.sparse import SparseMask
from zoo.plugins import method_hooks

METHODS = {
    "s2ft": lambda: S2FT(o_heads=0.5, down_channels=0.25),
    "sparse": lambda: SparseMask(density=0.1, strategy="random", target_modules=["o_proj", "down_proj"]),
    "lora": lambda: LoRA(r=2, target_modules=["o_proj", "down_proj"]),
    "full": lambda: FullFineTuning(),
}
TARGET = "model.layers.1.self_attn.o_proj"


def with_int8(model: nn.Module) -> nn.Module:
    linear = model.get_submodule(TARGET)
    linear.weight = nn.Parameter(linear.weight.detach().mul(100).to(torch.int8), requires_grad=False)
    return model


def with_float8(model: nn.Module) -> nn.Module:
    linear = model.get_submodule(TARGET)
    linear.weight = nn.Parameter(linear.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    return model


def with_ao_quantized(model: nn.Module) -> nn.Module:
    linear = model.get_submodule(TARGET)
    quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]
    model.set_submodule(TARGET, quantized)
    return model


def snapshot(model: nn.Module) -> tuple[dict[str, type], dict[str, torch.Tensor], int]:
    modules = {name: type(m) for name, m in model.named_modules()}
    tensors = {name: t.detach().clone() for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)}
    return modules, tensors, sum(p.requires_grad for p in model.parameters())


def assert_unchanged(model: nn.Module, before) -> None:
    modules, tensors, trainable = snapshot(model)
    assert modules == before[0]
    assert tensors.keys() == before[1].keys()
    for name, tensor in tensors.items():
        assert torch.equal(tensor.view(torch.uint8) if tensor.dtype.itemsize == 1 else tensor,
                           before[1][name].view(torch.uint8) if tensor.dtype.itemsize == 1 else before[1][name]), name  # fmt: skip
    assert trainable == before[2] == 0


def select(hooks, model: nn.Module):
    data = batches(count=1)
    return hooks.ftzoo_select_parameters(model=model, calibration_batches=lambda: iter(data), seed=0)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("fault", [with_int8, with_float8], ids=["int8", "float8"])
def test_a_non_float_weight_is_refused_before_the_model_changes(method, fault):
    hooks = method_hooks(METHODS[method]())
    selection = select(hooks, base_model())  # what a float base selects (a resumed run passes it in)
    model = fault(base_model())
    before = snapshot(model)
    dtype = "torch.int8" if fault is with_int8 else "torch.float8_e4m3fn"
    with pytest.raises(ValueError, match=rf"left unchanged: .*{TARGET}.weight has dtype {dtype}"):
        hooks.ftzoo_rewrite_model(model=model, selection=selection)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_torch_ao_quantized_projection_is_refused_by_name(method):
    hooks = method_hooks(METHODS[method]())
    model = with_ao_quantized(base_model())
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{TARGET}.*(quantized|not a tensor|not a torch nn.Linear)"):
        hooks.ftzoo_rewrite_model(model=model, selection=select(hooks, model))
    assert_unchanged(model, before)
