"""Mistakes a method's author makes, caught when the method is loaded or the selection is made,
with a message that says what to change (not at checkpoint time or at the end of fit)."""

from __future__ import annotations

import pytest
import torch

from stub_methods import Norms
from zoo import Adapter, BaseModelInfo, hookimpl
from zoo.adapter import AdapterError
from zoo.inference import MixedAdapterModel, fuse_into
from zoo.module import FineTuneModule
from zoo.plugins import PluginError, method_hooks
from zoo.prepare import prepare
from zoo.testing import base_model


def test_a_correct_method_prepares():
    prepared = prepare(base_model(), Norms())
    assert prepared.trainable and all(n.endswith("norm.weight") for n, _ in prepared.trainable)


def test_missing_adapter_deltas_is_refused_when_the_method_is_loaded(tiny_llama_dir):
    class NoDeltas(Norms):
        ftzoo_adapter_deltas = None

    with pytest.raises(PluginError, match="does not implement ftzoo_adapter_deltas; every method implements"):
        method_hooks(NoDeltas())
    with pytest.raises(PluginError, match="ftzoo_adapter_deltas"):  # lightning fit fails before loading a model
        FineTuneModule(model=str(tiny_llama_dir), method=NoDeltas())


def test_init_arguments_not_stored_are_refused_when_the_method_is_loaded():
    class Forgetful(Norms):
        def __init__(self, rank: int = 4):
            self.r = rank

    with pytest.raises(PluginError, match=r"config cannot rebuild it .*'rank' is not stored.*store every __init__ argument"):
        method_hooks(Forgetful())


def test_a_hook_without_hookimpl_is_refused_by_name():
    class Unmarked(Norms):
        def ftzoo_select_parameters(self, model):  # no @hookimpl: pluggy would never call it
            return ["model.norm.weight"]

    with pytest.raises(PluginError, match=r"ftzoo_select_parameters is not marked with @hookimpl"):
        method_hooks(Unmarked())


@pytest.mark.parametrize(
    ("selection", "named"),
    [({"a", "b"}, "selection is a set"), ({"w": torch.ones(2)}, r"selection\['w'\] is a Tensor"), ({1: "x"}, "selection has a key 1 of type int")],
    ids=["set", "tensor", "int-key"],
)
def test_a_selection_that_cannot_be_stored_is_refused_when_it_is_made(selection, named):
    class Unstorable(Norms):
        @hookimpl
        def ftzoo_select_parameters(self, model):
            return selection

    with pytest.raises(PluginError, match=f"cannot be stored: {named}"):
        prepare(base_model(), Unstorable())


def test_a_rewrite_that_leaves_everything_frozen_says_so():
    class Frozen(Norms):
        @hookimpl
        def ftzoo_rewrite_model(self, model, selection):
            pass  # forgot requires_grad_(True)

    with pytest.raises(PluginError, match=r"no parameter has requires_grad=True: the rewrite must call requires_grad_"):
        prepare(base_model(), Frozen())


def test_added_parameters_must_carry_the_prefix():
    class Unprefixed(Norms):
        prefix = "mine_"

        @hookimpl
        def ftzoo_rewrite_model(self, model, selection):
            model.model.norm.register_parameter("extra", torch.nn.Parameter(torch.zeros(2)))

    with pytest.raises(PluginError, match=r"\['model.norm.extra'\] whose names do not contain its prefix 'mine_'"):
        prepare(base_model(), Unprefixed())


class WrongKeys(Norms):
    name = "author-wrong-keys"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {"model.layers.0.nonexistent.weight": torch.zeros(2)}


class WrongShapes(Norms):
    name = "author-wrong-shapes"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {"model.norm.weight": torch.zeros(3)}


@pytest.mark.parametrize(
    ("cls", "message"),
    [(WrongKeys, "changes 'model.layers.0.nonexistent.weight', which the base model does not have"),
     (WrongShapes, r"gives 'model.norm.weight' shape \[3\]; the base has \[64\]")],
    ids=["keys", "shapes"],
)  # fmt: skip
def test_export_and_serve_name_wrong_delta_keys_and_shapes(cls, message, monkeypatch):
    from zoo import plugins

    monkeypatch.setitem(plugins._REGISTERED, cls.name, plugins.MethodEntry(cls.name, cls, "test", ""))
    plugins.available_methods.cache_clear()
    try:
        model = base_model()
        adapter = Adapter(cls.name, {}, [], BaseModelInfo.of(model, "tiny"), {})
        with pytest.raises(AdapterError, match=message):
            fuse_into(model, adapter, "adapter x")  # what export and merge --fuse do
        with pytest.raises(AdapterError, match=message):
            MixedAdapterModel(model, adapter.base).add_adapter("x", adapter)  # what serve does
    finally:
        plugins.available_methods.cache_clear()
