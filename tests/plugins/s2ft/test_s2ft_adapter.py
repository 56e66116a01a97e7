"""S²FT adapters: extract, save/load, fuse/unfuse, dense deltas, merge, and refusing wrong bases."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model
from s2ft_cases import ALL_ROLES as ROLES

from plugins.s2ft import S2FT, structured_updates
from zoo import Adapter, AdapterError, BaseModelInfo, load_adapter, save_adapter
from zoo.merging import MergeOptions, combine
from zoo.plugins import method_hooks



def trained(s2, arch="llama-gqa", dtype=torch.float64, seed=0, steps=3, **config):
    """(rewritten, hooks, adapter) after a few AdamW steps."""
    r = s2.rewritten(arch, dtype=dtype, seed=seed, **(config or ROLES))
    hooks = method_hooks(r.method)
    optimizer = torch.optim.AdamW([p for _, p in hooks.ftzoo_trainable_parameters(model=r.model)], lr=1e-2)
    for step in range(steps):
        r.model(**s2.make_batch(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = hooks.ftzoo_extract_adapter(model=r.model, selection=r.selection)
    adapter = Adapter("s2ft", r.method.config(), r.selection, BaseModelInfo.of(r.base, arch), tensors)
    return r, hooks, adapter


@pytest.mark.parametrize("arch", ["llama-gqa", "llama-mha", "qwen2"])
def test_saved_adapter_fuses_into_a_fresh_base(s2, arch, tmp_path):
    r, hooks, adapter = trained(s2, arch)
    loaded = load_adapter(save_adapter(adapter, tmp_path / "adapter"))
    assert loaded.selection == r.selection
    fresh = copy.deepcopy(r.base)
    assert hooks.ftzoo_load_adapter(model=fresh, adapter=loaded)
    batch = s2.make_batch(11)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, r.model(**batch).logits, rtol=1e-10, atol=1e-10)


def test_fuse_then_unfuse_restores_the_base_exactly(s2):
    r, hooks, adapter = trained(s2, dtype=torch.float32)
    model = copy.deepcopy(r.base)
    undo = hooks.ftzoo_fuse_adapter(model=model, adapter=adapter, scale=0.5)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), r.base.parameters()))
    hooks.ftzoo_unfuse_adapter(model=model, adapter=adapter, undo=undo)
    for (name, p), q in zip(model.named_parameters(), r.base.parameters()):
        assert torch.equal(p, q), name


def test_dense_deltas_are_fused_minus_base(s2):
    r, hooks, adapter = trained(s2, arch="qwen2")
    deltas = hooks.ftzoo_adapter_deltas(adapter=adapter, model=r.base)
    fused = copy.deepcopy(r.base)
    hooks.ftzoo_fuse_adapter(model=fused, adapter=adapter, scale=1.0)
    assert any(name.endswith(".bias") for name in deltas)  # Qwen2's V bias slices trained
    for name, delta in deltas.items():
        assert delta.shape == r.base.get_parameter(name).shape
        torch.testing.assert_close(fused.get_parameter(name) - r.base.get_parameter(name), delta)


def test_structured_updates_name_base_slices(s2):
    r, _, adapter = trained(s2, steps=1)
    updates = structured_updates(adapter)
    assert {u.param for u in updates} >= {e["module"] + ".weight" for e in r.selection["projections"]}
    for param, dim, indices, delta in updates:
        weight = r.base.get_parameter(param)
        assert delta.shape[dim] == len(indices) and (weight.ndim == 1 or delta.shape[1 - dim] == weight.shape[1 - dim])
        assert torch.equal(indices, indices.sort().values)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapping", "disjoint"])
@pytest.mark.parametrize(
    "options",
    [MergeOptions("sum"), MergeOptions("task_arithmetic", scale=0.5), MergeOptions("average", average_over="all"),
     MergeOptions("average", average_over="changed")],
    ids=["sum", "task_arithmetic", "average-all", "average-changed"],
)  # fmt: skip
def test_merge_in_s2ft_form_equals_the_dense_merge(s2, overlap, options, tmp_path):
    first = {"down_channels": 0.3, "o_heads": 2, "allocation": "per_layer"}
    second = (
        {"down_channels": 0.3, "o_heads": 2, "allocation": "per_layer"}
        if overlap
        else {"v_heads": 1, "up_channels": 0.2, "allocation": "per_layer"}
    )
    r, hooks, a = trained(s2, seed=0, **first)
    _, _, b = trained(s2, seed=1, **second)
    weights = [0.7, 0.9]
    merged = hooks.ftzoo_merge_adapters(adapters=[a, b], weights=weights, options=options)
    assert merged.method == "s2ft"
    dense = [hooks.ftzoo_adapter_deltas(adapter=x, model=r.base) for x in (a, b)]
    expected = combine(dense, weights, options)
    got = hooks.ftzoo_adapter_deltas(adapter=load_adapter(save_adapter(merged, tmp_path / "m")), model=r.base)
    assert set(got) == set(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(got[name], delta.to(got[name].dtype))
    a_units = {(e["layer"], e["role"]): set(e["units"]) for e in a.selection["projections"]}
    b_units = {(e["layer"], e["role"]): set(e["units"]) for e in b.selection["projections"]}
    for e in merged.selection["projections"]:
        key = (e["layer"], e["role"])
        assert set(e["units"]) == a_units.get(key, set()) | b_units.get(key, set())


def test_merge_declines_other_methods_of_merging(s2):
    _, hooks, a = trained(s2, steps=1)
    assert hooks.ftzoo_merge_adapters(adapters=[a, a], weights=[1, 1], options=MergeOptions("ties")) is None


def test_wrong_base_is_refused_naming_layer_and_projection(s2):
    _, hooks, adapter = trained(s2, steps=1)
    other = tiny_model("llama-gqa", dtype=torch.float64, intermediate_size=128)
    with pytest.raises(AdapterError, match=r"layer 0 (gate|up|down) projection .*mlp\.\w+_proj\.weight.*shape"):
        hooks.ftzoo_fuse_adapter(model=other, adapter=adapter, scale=1.0)
    untouched = tiny_model("llama-gqa", dtype=torch.float64, intermediate_size=128)
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), untouched.parameters()))  # nothing half-fused
    with pytest.raises(AdapterError, match="BaseModel|other weights|intermediate_size"):
        adapter.base.check_same(BaseModelInfo.of(other, "other"), what="the adapter")


def test_fusing_into_a_rewritten_model_is_refused(s2):
    r, hooks, adapter = trained(s2, steps=1)
    with pytest.raises(AdapterError, match="plain base model"):
        hooks.ftzoo_fuse_adapter(model=r.model, adapter=adapter, scale=1.0)


def test_method_config_round_trips():
    method = S2FT(o_heads=3, down_channels=0.1, strategy="gradient", largest=False, layers=[0, 2])
    assert S2FT(**method.config()).config() == method.config()


def test_bf16_adapter_reproduces_the_trained_weights_exactly(s2):
    r, hooks, adapter = trained(s2, dtype=torch.bfloat16)
    fused = copy.deepcopy(r.base)
    hooks.ftzoo_fuse_adapter(model=fused, adapter=adapter, scale=1.0)
    for name, layer in s2.s2ft_layers(r.model).items():
        trained_values, index = s2.base_coordinates(layer, layer.s2ft_weight.detach())
        assert torch.equal(fused.get_parameter(f"{name}.weight").index_select(layer.dim, index), trained_values), name
