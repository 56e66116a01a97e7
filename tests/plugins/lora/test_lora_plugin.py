"""LoRA/DoRA through PEFT: in-place injection, PEFT's own folder format, PEFT's merge math."""

from __future__ import annotations

import json

import pytest
import torch
from method_harness import base_model, batches, logits, train
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from plugins.lora import DoRA, LoRA
from plugins.lora.config import LLM_ADAPTERS_TARGETS
from zoo import save_adapter
from zoo.merging.combine import MergeOptions, combine
from zoo.plugins import method_hooks

BATCH = batches(count=1, seed=11)[0]


@pytest.fixture(scope="module")
def lora():
    return train(LoRA(r=4, alpha=8))


@pytest.fixture(scope="module")
def dora():
    return train(DoRA(r=4, alpha=8))


def test_registered_names_and_defaults():
    assert LoRA.name == "lora" and DoRA.name == "dora" and LoRA.prefix == DoRA.prefix == "lora_"
    assert LoRA().target_modules == list(LLM_ADAPTERS_TARGETS) == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert "use_dora" not in DoRA().config() and DoRA().use_dora
    assert LoRA(r=4).config() == {
        "r": 4, "alpha": 64, "dropout": 0.05, "target_modules": list(LLM_ADAPTERS_TARGETS), "use_rslora": False,
        "init_lora_weights": True, "use_dora": False, "bias": "none", "adapter_dtype": "model",
    }  # fmt: skip


def test_injection_keeps_module_names_and_outputs():
    model, base = base_model(), base_model()
    hooks = method_hooks(LoRA(r=4))
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=None, seed=3)
    assert selection["targets"][:3] == [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    assert len(selection["targets"]) == 2 * 5
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    assert isinstance(model.get_submodule("model.layers.1.mlp.down_proj"), LoraLayer)
    assert not isinstance(model.get_submodule("model.layers.1.mlp.gate_proj"), LoraLayer)
    trainable = [name for name, _ in hooks.ftzoo_trainable_parameters(model=model)]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    torch.testing.assert_close(logits(model, BATCH), logits(base, BATCH))  # B = 0 at init


@pytest.mark.parametrize("init", ["gaussian", "pissa", "pissa_niter_2", "olora"])
def test_output_preserving_inits(init):
    model = base_model()
    hooks = method_hooks(LoRA(r=4, init_lora_weights=init))
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=None, seed=0)
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    torch.testing.assert_close(logits(model, BATCH), logits(base_model(), BATCH), atol=1e-5, rtol=1e-4)


def test_unknown_adapter_dtype_fails():
    with pytest.raises(ValueError, match="adapter_dtype must be 'model' or 'float32', got 'fp32'"):
        LoRA(adapter_dtype="fp32")


def test_rejected_inits():
    with pytest.raises(ValueError, match="not supported"):
        LoRA(init_lora_weights="orthogonal")
    with pytest.raises(ValueError, match="DoRA"):
        DoRA(init_lora_weights="pissa")


def test_misspelled_target_fails():
    with pytest.raises(ValueError, match="matches no"):
        method_hooks(LoRA(target_modules=["q_prj"])).ftzoo_select_parameters(
            model=base_model(), calibration_batches=None, seed=0
        )


def test_rewrite_is_reproducible_from_the_selection():
    hooks = method_hooks(LoRA(r=4))
    first, second = base_model(), base_model()
    selection = hooks.ftzoo_select_parameters(model=first, calibration_batches=None, seed=5)
    for model in (first, second):
        hooks.ftzoo_rewrite_model(model=model, selection=selection)
    for (name, p), (_, q) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(p, q), name


def test_adapter_tensors_use_peft_key_naming(lora, dora):
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in lora.adapter.tensors
    assert lora.adapter.tensors["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert "model.layers.0.mlp.down_proj.lora_magnitude_vector" in dora.adapter.tensors


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_peft_from_pretrained_gives_trained_logits(name, lora, dora, tmp_path):
    trained = {"lora": lora, "dora": dora}[name]
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "tiny-llama-gqa" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(LLM_ADAPTERS_TARGETS) and config["use_dora"] == (name == "dora")
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert all(k.startswith("base_model.model.model.layers.") for k in keys)
    peft_model = PeftModel.from_pretrained(base_model(), folder)
    torch.testing.assert_close(logits(peft_model, BATCH), logits(trained.model, BATCH), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_deltas_equal_peft_merge_and_unload(name, lora, dora, tmp_path):
    trained = {"lora": lora, "dora": dora}[name]
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    merged = PeftModel.from_pretrained(base_model(), folder).merge_and_unload()
    base = base_model()
    deltas = trained.hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=base)
    assert len(deltas) == 10
    for key, delta in deltas.items():
        torch.testing.assert_close(delta, merged.get_parameter(key) - base.get_parameter(key), rtol=0, atol=1e-6)


def test_pissa_adapter_is_exported_as_plain_lora_of_rank_2r(tmp_path):
    trained = train(LoRA(r=4, alpha=8, init_lora_weights="pissa"))
    assert trained.adapter.tensors["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 64)
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)
    peft_model = PeftModel.from_pretrained(base_model(), folder)
    torch.testing.assert_close(logits(peft_model, BATCH), logits(trained.model, BATCH), rtol=1e-5, atol=1e-5)


def test_load_adapter_injects_unfused(lora):
    model = base_model()
    lora.hooks.ftzoo_load_adapter(model=model, adapter=lora.adapter)
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(layer, LoraLayer) and not layer.merged and "default" in layer.lora_A
    assert not model.training and not layer.training  # dropout off, as in the base
    assert not any(p.requires_grad for p in model.parameters())


def test_mixed_adapter_batch_from_saved_folders(lora, dora, tmp_path):
    """Both folders load into one PeftModel; each row of a batch uses its own adapter."""
    second = train(LoRA(r=4, alpha=8), steps=2, lr=3e-2)
    folders = [save_adapter(t.adapter, tmp_path / n, hooks=t.hooks) for n, t in (("a", lora), ("b", second))]
    peft_model = PeftModel.from_pretrained(base_model(), folders[0], adapter_name="a")
    peft_model.load_adapter(folders[1], adapter_name="b")
    ids = BATCH["input_ids"]
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, adapter_names=["a", "b"]).logits
    torch.testing.assert_close(mixed[0], logits(lora.model, {**BATCH, "input_ids": ids})[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], logits(second.model, {**BATCH, "input_ids": ids})[1], atol=1e-5, rtol=1e-5)


def test_serving_deltas_are_low_rank_modules(lora, dora):
    base = base_model()
    modules = lora.hooks.ftzoo_serving_deltas(adapter=lora.adapter, model=base)
    deltas = lora.hooks.ftzoo_adapter_deltas(adapter=lora.adapter, model=base)
    x = torch.randn(3, 5, 64)
    name = "model.layers.1.self_attn.v_proj"
    torch.testing.assert_close(modules[name](x), x @ deltas[name + ".weight"].T, atol=1e-6, rtol=1e-5)
    assert type(modules[name]).__name__ == "LowRankDelta"


def test_dora_serving_deltas_rescale_the_base_output_as_the_merged_weight_does(dora):
    """DoRA's serving module, given the input and the base output, changes it as the dense delta
    (PEFT's merge) does: with the base's bias and without, no dense ``[out, in]`` matrix held."""
    base = base_model()
    modules = dora.hooks.ftzoo_serving_deltas(adapter=dora.adapter, model=base)
    deltas = dora.hooks.ftzoo_adapter_deltas(adapter=dora.adapter, model=base)
    name = "model.layers.1.self_attn.v_proj"
    layer, delta = base.get_submodule(name), modules[name]
    assert type(delta).__name__ == "DoraDelta" and delta.takes_base_output
    assert all(buffer.numel() < layer.weight.numel() // 4 for buffer in delta.buffers())
    x = torch.randn(3, 5, 64)
    expected = x @ deltas[name + ".weight"].T
    torch.testing.assert_close(delta(x, layer(x)), expected, atol=1e-6, rtol=1e-5)
    assert expected.abs().max() > 1e-3  # the adapter changes the layer
    layer.bias = torch.nn.Parameter(torch.randn(layer.out_features))
    with_bias = dora.hooks.ftzoo_serving_deltas(adapter=dora.adapter, model=base)[name]
    torch.testing.assert_close(with_bias(x, layer(x)), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("how", ["sum", "average", "task_arithmetic"])
def test_linear_merges_stack_ranks_exactly(how, lora):
    other = train(LoRA(r=2, alpha=8, use_rslora=True), steps=2)
    adapters, weights = [lora.adapter, other.adapter], [0.7, 0.4]
    options = MergeOptions(how=how, scale=0.5, average_over="all")
    merged = lora.hooks.ftzoo_merge_adapters(adapters=adapters, weights=weights, options=options)
    assert merged.tensors["model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 6
    base = base_model()
    dense = [lora.hooks.ftzoo_adapter_deltas(adapter=a, model=base) for a in adapters]
    expected = combine(dense, weights, MergeOptions(how=how, scale=0.5, average_over="all"))
    got = lora.hooks.ftzoo_adapter_deltas(adapter=merged, model=base)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-4)


def test_nonlinear_merges_and_dora_decline(lora, dora):
    assert lora.hooks.ftzoo_merge_adapters(adapters=[lora.adapter] * 2, weights=[1, 1], options=MergeOptions("ties")) is None
    assert dora.hooks.ftzoo_merge_adapters(adapters=[dora.adapter] * 2, weights=[1, 1], options=MergeOptions("sum")) is None


def test_half_precision_base_trains_adapters_in_its_dtype_by_default():
    trained = train(LoRA(r=4, alpha=8), steps=1, dtype=torch.bfloat16)
    assert {p.dtype for _, p in trained.trainable} == {torch.bfloat16}
    assert {t.dtype for t in trained.adapter.tensors.values()} == {torch.bfloat16}
    model = base_model(dtype=torch.bfloat16)
    trained.hooks.ftzoo_load_adapter(model=model, adapter=trained.adapter)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    torch.testing.assert_close(logits(model, BATCH), logits(trained.model, BATCH), rtol=0, atol=0)


def test_half_precision_base_trains_float32_adapters_when_asked():
    trained = train(LoRA(r=4, alpha=8, adapter_dtype="float32"), steps=1, dtype=torch.bfloat16)
    assert {p.dtype for _, p in trained.trainable} == {torch.float32}
    assert {t.dtype for t in trained.adapter.tensors.values()} == {torch.float32}
    model = base_model(dtype=torch.bfloat16)
    trained.hooks.ftzoo_load_adapter(model=model, adapter=trained.adapter)
    torch.testing.assert_close(logits(model, BATCH), logits(trained.model, BATCH), rtol=0, atol=0)
