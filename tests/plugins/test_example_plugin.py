"""The example third-party plugin ``examples/ftzoo-norms``: discovered through its entry point
and trained through the CLI by its registered name.

When the package is installed (``pip install -e examples/ftzoo-norms --no-deps``) its real
distribution is used; otherwise the test fakes that distribution from the package's own
``pyproject.toml`` (as pluggy's ``test_load_setuptools_instantiation`` does), so the declared
entry point is what is tested either way.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from method_harness import fit_args

from zoo import load_adapter
from zoo.cli import build_cli
from zoo.plugins import ENTRY_POINT_GROUP, available_methods

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "ftzoo-norms"
PYPROJECT = tomllib.loads((PACKAGE / "pyproject.toml").read_text())


class NormsDistribution:
    """The ``ftzoo-norms`` distribution as its pyproject.toml declares it."""

    name = PYPROJECT["project"]["name"]
    version = PYPROJECT["project"]["version"]

    @property
    def entry_points(self):
        declared = PYPROJECT["project"]["entry-points"][ENTRY_POINT_GROUP]
        return [importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in declared.items()]


@pytest.fixture
def norms_installed(monkeypatch):
    """Make ``norms`` discoverable: the installed distribution, or a faked one."""
    available_methods.cache_clear()
    if "norms" not in available_methods():
        monkeypatch.syspath_prepend(str(PACKAGE / "src"))
        real = importlib.metadata.entry_points

        def entry_points(group=None, **kw):
            eps = list(real(group=group, **kw)) if group else real(**kw)
            if group == ENTRY_POINT_GROUP:
                dist = NormsDistribution()
                eps += [ep._for(dist) for ep in dist.entry_points]
            return eps

        monkeypatch.setattr("zoo.plugins.entry_points", entry_points)
        available_methods.cache_clear()
    yield available_methods()["norms"]
    available_methods.cache_clear()


def test_entry_point_is_discovered_with_its_distribution(norms_installed):
    from ftzoo_norms import NormsOnly

    assert norms_installed.cls is NormsOnly
    assert (norms_installed.distribution, norms_installed.version) == ("ftzoo-norms", "0.1.0")
    from zoo.__main__ import list_plugins

    assert any(line.split()[0] == "norms" and "ftzoo-norms" in line for line in list_plugins().splitlines())


def test_fit_by_registered_name_through_the_cli(norms_installed, tiny_llama_dir, tmp_path):
    extra = ["--model.method.init_args.include_final_norm", "false"]
    build_cli(fit_args(tiny_llama_dir, tmp_path, 3, "norms", *extra))
    adapter = load_adapter(tmp_path / "run" / "version_0" / "adapter")
    assert adapter.method == "norms" and adapter.config["include_final_norm"] is False
    assert adapter.info["prompt_style"] == "chat"  # the training template travels with the adapter
    assert (
        sorted(adapter.tensors)
        == sorted(adapter.selection)
        == [
            f"model.layers.{i}.{norm}.weight"
            for i in range(2)
            for norm in ("input_layernorm", "post_attention_layernorm")
        ]
    )
    assert any(not torch.equal(t, torch.ones_like(t)) for t in adapter.tensors.values())  # RMSNorm weights start at 1
