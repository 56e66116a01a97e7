"""The ``merged`` method: dense deltas keyed by base parameter name, an ordinary adapter."""

from __future__ import annotations

import pytest
import torch
from tiny_adapters import column_deltas
from tiny_models import tiny_model

from plugins.merge import MergedDeltas
from zoo.merging import merged_adapter
from zoo.adapter import AdapterError, BaseModelInfo, load_adapter, save_adapter
from zoo.plugins import available_methods, method_hooks


@pytest.fixture()
def model():
    return tiny_model()


def test_merged_is_registered_by_entry_point():
    assert available_methods()["merged"].cls is MergedDeltas


def test_save_load_fuse_unfuse(tmp_path, model):
    deltas = column_deltas(model, seed=0)
    adapter = merged_adapter(deltas, BaseModelInfo.of(model, "tiny"), info={"merge": {"how": "sum"}})
    loaded = load_adapter(save_adapter(adapter, tmp_path / "merged"))
    assert loaded.method == "merged" and loaded.selection == sorted(deltas)
    hooks = method_hooks(MergedDeltas())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    undo = hooks.ftzoo_fuse_adapter(model=model, adapter=loaded, scale=1.0)
    for name, delta in deltas.items():
        assert torch.equal(model.get_parameter(name), base[name] + delta)
    hooks.ftzoo_unfuse_adapter(model=model, adapter=loaded, undo=undo)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_deltas_refuse_unknown_parameters_and_shapes(model):
    info = BaseModelInfo.of(model, "tiny")
    hooks = method_hooks(MergedDeltas())
    with pytest.raises(AdapterError, match="does not have"):
        hooks.ftzoo_adapter_deltas(adapter=merged_adapter({"nope.weight": torch.ones(2)}, info), model=model)
    wrong = {"model.layers.0.self_attn.o_proj.weight": torch.ones(3, 3)}
    with pytest.raises(AdapterError, match=r"shape \[3, 3\]"):
        hooks.ftzoo_adapter_deltas(adapter=merged_adapter(wrong, info), model=model)


def test_merged_does_not_train(model):
    with pytest.raises(RuntimeError, match="does not train"):
        method_hooks(MergedDeltas()).ftzoo_select_parameters(model=model, calibration_batches=iter, seed=0)
