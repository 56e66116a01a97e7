"""Method discovery through entry points, and only the chosen method answering."""

import ast
import importlib.metadata

import pytest
from locations import REPO
from stub_methods import Complete

import zoo
from zoo import Method, hookimpl
from zoo.plugins import (
    ENTRY_POINT_GROUP,
    PluginError,
    available_methods,
    method_class,
    method_from_config,
    method_hooks,
)


class Doubler(Complete):
    name = "doubler"
    prefix = "doubler_"

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    @hookimpl
    def ftzoo_select_parameters(self, seed):
        return {"seed": seed, "factor": self.factor}


class FakeDist:
    """A distribution whose only entry point registers Doubler (as pluggy's own tests fake it)."""

    name = "ftzoo-doubler"
    version = "1.2.3"

    @property
    def entry_points(self):
        return [importlib.metadata.EntryPoint("doubler", f"{__name__}:Doubler", ENTRY_POINT_GROUP)]


@pytest.fixture
def fake_distribution(monkeypatch):
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        eps = list(real(group=group, **kw)) if group else real(**kw)
        if group == ENTRY_POINT_GROUP:
            ep = FakeDist().entry_points[0]
            eps.append(ep._for(FakeDist()) if hasattr(ep, "_for") else ep)
        return eps

    monkeypatch.setattr("zoo.plugins.entry_points", entry_points)
    available_methods.cache_clear()
    yield
    available_methods.cache_clear()


def test_builtin_full_is_registered_through_its_entry_point():
    entry = available_methods()["full"]
    assert entry.distribution == "ftzoo"
    assert entry.cls.__name__ == "FullFineTuning"


def test_third_party_distribution_is_discovered(fake_distribution):
    entry = available_methods()["doubler"]
    assert entry.cls is Doubler and entry.distribution == "ftzoo-doubler" and entry.version == "1.2.3"
    method = method_from_config("doubler", {"factor": 3.0})
    assert method_hooks(method).ftzoo_select_parameters(model=None, calibration_batches=None, seed=7) == {
        "seed": 7,
        "factor": 3.0,
    }


def test_unknown_name_lists_known_methods():
    with pytest.raises(PluginError, match="no method named 'nope'.*full"):
        method_class("nope")


def test_only_the_chosen_method_answers():
    class Other(Complete):
        name = "other"

        @hookimpl
        def ftzoo_select_parameters(self):
            return "other"

    assert method_hooks(Other()).ftzoo_select_parameters(model=None, calibration_batches=None, seed=0) == "other"
    assert method_hooks(Doubler()).ftzoo_select_parameters(model=None, calibration_batches=None, seed=0)["factor"] == 2.0


def test_misspelled_hook_fails_loudly():
    class Typo(Method):
        @hookimpl
        def ftzoo_selct_parameters(self):
            return None

    with pytest.raises(PluginError, match="ftzoo_selct_parameters"):
        method_hooks(Typo())


def test_config_must_be_stored_as_attributes():
    class Forgetful(Method):
        def __init__(self, rank: int = 4):
            self.r = rank

    with pytest.raises(TypeError, match="'rank' is not stored"):
        Forgetful().config()
    assert Doubler(5.0).config() == {"factor": 5.0}


def test_list_plugins_names_the_distribution():
    from zoo.__main__ import list_plugins

    table = list_plugins()
    assert table.splitlines()[0].split() == ["name", "class", "distribution"]
    assert any(line.split()[:3] == ["full", "plugins.full.plugin.FullFineTuning", "ftzoo"] for line in table.splitlines())


def test_builtin_plugins_use_only_the_face_an_outside_plugin_has():
    """Built-ins (and the example package) register and import like third parties: only
    ``from zoo import ...`` of names in ``zoo.__all__``."""
    inside = []
    for path in sorted([*(REPO / "plugins").rglob("*.py"), *(REPO / "examples").glob("*/src/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zoo"):
                if node.module != "zoo":
                    inside.append(f"{path.relative_to(REPO)}: from {node.module}")
                inside += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name not in zoo.__all__]
            elif isinstance(node, ast.Import):
                inside += [f"{path.relative_to(REPO)}: import {a.name}" for a in node.names if a.name.startswith("zoo")]
    assert inside == []
    assert {"MergeOptions", "How", "MERGED_METHOD", "find_modules", "UnsupportedWeightError"} <= set(zoo.__all__)
