"""The ``sparse`` method: selection format, only masked entries change, merge, serving."""

from __future__ import annotations

import json

import pytest
import torch
from method_harness import base_model, batches, train

from zoo.merging.combine import MergeOptions, combine
from plugins.sparse import SparseMask
from plugins.sparse.layer import SparseMaskLinear
from plugins.sparse.model import selected_indices
from zoo.plugins import method_hooks


@pytest.fixture(scope="module")
def trained():
    return train(SparseMask(density=0.05, strategy="weight"))


def test_config_validation():
    assert SparseMask.name == "sparse" and SparseMask.prefix == "mask_"
    for bad in ({"density": 0}, {"density": 1.5}, {"strategy": "magic"}, {"grad_mode": "fast"}):
        with pytest.raises(ValueError):
            SparseMask(**bad)


def test_selection_carries_the_indices_as_json(trained):
    selection = json.loads(json.dumps(trained.selection))
    assert selection["strategy"] == "weight" and selection["density"] == 0.05
    q = selection["targets"]["model.layers.0.self_attn.q_proj"]
    assert q["shape"] == [64, 64] and q["count"] == round(0.05 * 64 * 64)
    indices = selected_indices(selection)
    assert len(indices) == 2 * 7
    for name, idx in indices.items():
        assert torch.equal(trained.adapter.tensors[f"{name}.mask_indices"].long(), idx)


def test_rewrite_keeps_names_and_outputs():
    model = base_model()
    hooks = method_hooks(SparseMask(density=0.1, strategy="random"))
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=None, seed=0)
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    assert isinstance(model.get_submodule("model.layers.0.mlp.up_proj"), SparseMaskLinear)
    assert {n for n, _ in base_model().named_parameters()} <= {n for n, _ in model.named_parameters()}
    trainable = [n for n, _ in hooks.ftzoo_trainable_parameters(model=model)]
    assert len(trainable) == 14 and all(n.endswith(".mask_values") for n in trainable)
    batch = batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base_model()(**batch).logits, rtol=0, atol=0)


def test_only_masked_entries_change(trained):
    base = base_model()
    deltas = trained.hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=base)
    for name, delta in deltas.items():
        module = name.removesuffix(".weight")
        mask = torch.zeros(delta.numel(), dtype=torch.bool)
        mask[trained.adapter.tensors[f"{module}.mask_indices"].long()] = True
        assert not delta.flatten()[~mask].any() and delta.flatten()[mask].any(), name
    fused = base_model()
    trained.hooks.ftzoo_fuse_adapter(model=fused, adapter=trained.adapter, scale=1.0)
    changed = sum(int((p != q).sum()) for p, q in zip(fused.parameters(), base.parameters()))
    assert 0 < changed <= sum(len(v) for k, v in trained.adapter.tensors.items() if k.endswith("mask_values"))


def test_fuse_scale(trained):
    base, half = base_model(), base_model()
    trained.hooks.ftzoo_fuse_adapter(model=half, adapter=trained.adapter, scale=0.5)
    deltas = trained.hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=base)
    for name, delta in deltas.items():
        torch.testing.assert_close(half.get_parameter(name) - base.get_parameter(name), 0.5 * delta)


def test_serving_deltas_are_sparse_modules(trained):
    base = base_model()
    modules = trained.hooks.ftzoo_serving_deltas(adapter=trained.adapter, model=base)
    deltas = trained.hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=base)
    x = torch.randn(2, 3, 96)
    name = "model.layers.1.mlp.down_proj"
    torch.testing.assert_close(modules[name](x), x @ deltas[name + ".weight"].T, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [{"how": "sum"}, {"how": "task_arithmetic", "scale": 0.5}, {"how": "average", "average_over": "all"},
     {"how": "average", "average_over": "changed"}],
)  # fmt: skip
def test_linear_merges_match_the_dense_formulas(trained, options):
    other = train(SparseMask(density=0.05, strategy="random"), steps=2)
    adapters, weights = [trained.adapter, other.adapter], [0.6, 0.3]
    merged = trained.hooks.ftzoo_merge_adapters(adapters=adapters, weights=weights, options=MergeOptions(**options))
    assert json.loads(json.dumps(merged.selection)) == merged.selection
    base = base_model()
    dense = [trained.hooks.ftzoo_adapter_deltas(adapter=a, model=base) for a in adapters]
    expected = combine(dense, weights, MergeOptions(**options))
    got = trained.hooks.ftzoo_adapter_deltas(adapter=merged, model=base)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-7, rtol=1e-5)


def test_ties_declines(trained):
    assert (
        trained.hooks.ftzoo_merge_adapters(adapters=[trained.adapter], weights=[1.0], options=MergeOptions("ties")) is None
    )
