"""Fault 9: a method plugin that is broken, or breaks the contract in a way training would not show.

| case                                          | what the user sees                                      | kept on disk        |
| --------------------------------------------- | ------------------------------------------------------- | ------------------- |
| an installed plugin fails to import, or       | one warning per plugin: "ftzoo: skipped method plugin   | nothing changes     |
| reuses a built-in name (``lora``)             | 'broken' (no_such_module:Method, from ftzoo-broken      |                     |
|                                               | 0.1): failed to load: ModuleNotFoundError: ..."; every  |                     |
|                                               | other method and tool works; ``python -m zoo plugins``  |                     |
|                                               | lists it under "broken (skipped)"; ``--model.method     |                     |
|                                               | broken`` repeats its error                              |                     |
| a method whose init argument is a ``set``     | PluginError when the method is loaded (before the model | no run folder       |
|                                               | loads): "init argument layers={1} is a set, which       |                     |
|                                               | cannot be stored as JSON ..."                           |                     |
| ``ftzoo_adapter_deltas`` returns the trained  | PluginError before the first step: "method              | no adapter, no      |
| values instead of differences (or names a     | 'value-deltas': ftzoo_adapter_deltas gives              | checkpoint          |
| parameter the base lacks)                     | 'model.norm.weight' a difference of up to 1 before any  |                     |
|                                               | training step ...; it must return fused - base weights" |                     |
|                                               | / "... changes 'model.layers.0.nonexistent.weight',     |                     |
|                                               | which the base model does not have"                     |                     |
| the same hook gives a delta of another shape, | PluginError before the first step: "... gives           | the same            |
| or fails on the untrained adapter             | 'model.norm.weight' shape [1, 64]; the base has [64]"   |                     |
|                                               | / "... fails on the adapter of the                      |                     |
|                                               | untrained rewrite: KeyError: ..."                       |                     |

A plugin author imports what the methods implement against from the package's face (``from zoo
import Method, hookimpl, MergeOptions, How, ...``), as the built-in plugins and the example package
do: ``tests/zoo/test_plugins.py::test_builtin_plugins_use_only_the_face_an_outside_plugin_has``.
"""

from __future__ import annotations

import importlib.metadata
import logging

import pytest
from faults.harness import quickstart_args, run_dir

from plugins.lora import LoRA
from zoo import module as zoo_module
from zoo.__main__ import list_plugins
from zoo.cli import build_cli, resolve_method_names
from zoo.plugins import ENTRY_POINT_GROUP, PluginError, available_methods, broken_plugins, method_class

pytestmark = pytest.mark.slow  # trains through Lightning


class BrokenDistribution:
    """An installed third-party package with one plugin that does not import and one that
    reuses a built-in name (faked as pluggy's own tests fake distributions)."""

    name = "ftzoo-broken"
    version = "0.1"

    @property
    def entry_points(self):
        return [
            importlib.metadata.EntryPoint("broken", "no_such_module:Method", ENTRY_POINT_GROUP),
            importlib.metadata.EntryPoint("lora", "faults.methods:Impostor", ENTRY_POINT_GROUP),
        ]


@pytest.fixture
def broken_installed(monkeypatch):
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        eps = list(real(group=group, **kw)) if group else real(**kw)
        if group == ENTRY_POINT_GROUP:  # the third party's first, as an unlucky install order would give them
            dist = BrokenDistribution()
            eps = [ep._for(dist) for ep in dist.entry_points] + eps
        return eps

    monkeypatch.setattr("zoo.plugins.entry_points", entry_points)
    available_methods.cache_clear()
    yield
    available_methods.cache_clear()


def test_a_broken_plugin_is_reported_and_skipped_and_the_others_work(
    broken_installed, tiny_llama_dir, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING, logger="zoo.plugins"):
        methods = available_methods()
    warned = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("ftzoo: skipped method plugin 'broken' (no_such_module:Method, from ftzoo-broken 0.1): "
                     "failed to load: ModuleNotFoundError: No module named 'no_such_module'")
        for m in warned
    ), warned  # fmt: skip
    assert any("'lora' (faults.methods:Impostor, from ftzoo-broken 0.1): reuses the name 'lora'" in m for m in warned)

    assert "broken" not in methods and methods["lora"].cls is LoRA and {"s2ft", "full", "sparse"} <= set(methods)
    assert method_class("lora") is LoRA
    assert resolve_method_names(["--model.method", "lora"])[1] == "plugins.lora.plugin.LoRA"
    assert set(broken_plugins()) == {"broken", "lora (ftzoo-broken)"}

    listed = list_plugins()
    assert listed.splitlines()[0].split() == ["name", "class", "distribution"]
    broken_section = listed.split("broken (skipped):\n", 1)[1]
    assert "'broken' (no_such_module:Method, from ftzoo-broken 0.1): failed to load" in broken_section
    assert "'lora' (faults.methods:Impostor, from ftzoo-broken 0.1): reuses the name" in broken_section

    with pytest.raises(PluginError, match=r"method plugin 'broken' .*ModuleNotFoundError.*fix or uninstall"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 1, "--model.method", "broken"))
    cli = build_cli(quickstart_args(tiny_llama_dir, tmp_path, 1))  # the built-in s2ft of the recipe trains
    assert cli.trainer.global_step == 1 and (run_dir(tmp_path) / "adapter" / "adapter.json").is_file()


def test_a_method_argument_that_is_not_json_is_refused_when_the_method_is_loaded(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_module, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    args = quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.method", "faults.methods.NormsOfLayers",
                           "--model.method.init_args.layers", "[1]")  # fmt: skip
    with pytest.raises(PluginError, match=r"NormsOfLayers: init argument layers=\{1\} is a set, which cannot be "
                                          r"stored as JSON .*a list instead of a set"):  # fmt: skip
        build_cli(args)
    assert not (tmp_path / "quickstart").exists()


@pytest.mark.parametrize(
    ("method", "message"),
    [("ValueDeltas", (r"method 'value-deltas': ftzoo_adapter_deltas gives '[\w.]+norm.weight' a difference of up "
                      r"to [\d.]+ before any training step .*it must return fused - base weights")),
     ("StrangerDeltas", (r"method 'stranger-deltas': ftzoo_adapter_deltas changes "
                         r"'model.layers.0.nonexistent.weight', which the base model does not have")),
     ("BatchedDeltas", (r"method 'batched-deltas': ftzoo_adapter_deltas gives '[\w.]+norm.weight' shape \[1, \d+\]; "
                        r"the base has \[\d+\]")),
     ("FailingDeltas", (r"method 'failing-deltas': ftzoo_adapter_deltas fails on the adapter of the untrained "
                        r"rewrite: KeyError: 'lm_head.weight'"))],
    ids=["values", "stranger-key", "wrong-shape", "hook-fails"],
)  # fmt: skip
def test_deltas_that_are_not_differences_are_refused_before_the_first_step(method, message, tiny_llama_dir, tmp_path):
    args = quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.method", f"faults.methods.{method}")
    with pytest.raises(PluginError, match=message) as refused:
        build_cli(args)
    assert refused.traceback[-1].name == "check_untrained_deltas"  # at the start of fit
    assert not (run_dir(tmp_path) / "adapter").exists() and not (run_dir(tmp_path) / "checkpoints").exists()
