"""Fault 6: wrong inputs whose messages must name the problem (nothing is written for any).

| case                                         | what the user sees                                                 |
| -------------------------------------------- | ------------------------------------------------------------------ |
| ``--model.method s2ftt`` (or in a YAML file) | "no method named 's2ftt' is installed. Did you mean 's2ft'?" and   |
|                                              | the installed methods; ``lightning`` prints one ``error:`` line    |
| a model path that does not exist             | "./no/such/model: no such model folder" (the hub is never asked)   |
| a folder that is not a model                 | "... is not a model folder: it has no config.json ..."             |
| an adapter folder given as the model         | "... is an ftzoo adapter, not a model ..."                         |
| a YAML syntax error in ``--config``          | "<file>, line 3, column 8: YAML syntax error: ..."                 |
| an adapter whose selection is out of range   | AdapterError naming the layer, the units and the valid range       |
| a negative fraction (``o_heads: -0.1``)      | "S2FT o_heads=-0.1 is negative; give a fraction in [0, 1] ..."     |
| a ``data_dir`` that does not exist           | one short line: "DataError: /nowhere: data_dir not found"          |
"""

from __future__ import annotations

import sys

import pytest
import torch
from faults.harness import quickstart_args
from method_harness import base_model

from locations import REPO
from zoo import cli as zoo_cli
from zoo.adapter import AdapterError
from zoo.cli import ConfigError, build_cli
from zoo.inference import hooks_for
from zoo.loading import ModelLoadError, load_model, load_tokenizer
from zoo.plugins import PluginError


def test_an_unknown_method_lists_the_installed_ones_and_the_closest(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(PluginError, match=r"no method named 's2ftt' is installed\. Did you mean 's2ft'\?.*lora"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 1, "--model.method", "s2ftt"))
    config = tmp_path / "method.yaml"
    config.write_text("model:\n  method:\n    class_path: loar\n")
    with pytest.raises(PluginError, match="Did you mean 'lora'"):
        build_cli(["fit", "--config", str(config)])
    monkeypatch.setattr(sys, "argv", ["lightning", *quickstart_args(tiny_llama_dir, tmp_path, 1, "--model.method=s2ftt")])
    with pytest.raises(SystemExit) as exit_:
        zoo_cli.main()
    assert str(exit_.value.code).startswith("error: no method named 's2ftt'") and "\n" not in str(exit_.value.code)


def test_a_missing_model_path_is_named_without_asking_the_hub(monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("asked transformers/the hub"))
    for path in ("./no/such/model", "/no/such/model", "runs/no/model", "~/no-such-model"):
        with pytest.raises(ModelLoadError, match=f"{path}: no such model folder"):
            load_tokenizer(path)


def test_a_folder_that_is_not_a_model_says_so(tiny, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="is not a model folder: it has no config.json"):
        load_model(str(notes))
    adapter = tiny.saved("lora", tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match="is an ftzoo adapter, not a model"):
        load_tokenizer(str(adapter))


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("model:\n  method: s2ft\n  bad: [1, 2\ntrainer: {}\n")
    with pytest.raises(ConfigError, match=rf"{config}, line \d+, column \d+: YAML syntax error"):
        build_cli(["fit", "--config", str(config)])


@pytest.mark.parametrize("method", ["s2ft", "sparse"])
def test_an_adapter_selection_out_of_range_is_an_adapter_error(tiny, method):
    adapter = tiny.adapter(method)
    if method == "s2ft":
        adapter.selection["projections"][0]["units"][-1] = 999
        expected = r"S²FT adapter selection names \w+s \[999\] of layer \d .* there are \d+ \(0 to \d+\)"
    else:
        key = next(k for k in adapter.tensors if k.endswith("mask_indices"))
        adapter.tensors[key] = adapter.tensors[key].clone()
        adapter.tensors[key][-1] = 10**7
        expected = r"mask index 10000000 of .* is outside its weight of shape"
    model = base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match=expected):
        hooks_for(adapter).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_negative_fraction_says_it_is_negative(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"S2FT o_heads=-0\.1 is negative; give a fraction in \[0, 1\]"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 1, "--model.method.init_args.o_heads", "-0.1"))


def test_a_missing_data_dir_is_one_short_line(tiny_llama_dir, tmp_path):
    args = ["fit", "--config", str(REPO / "configs/smollm2/math.yaml"), "--model.model", str(tiny_llama_dir),
            "--data.init_args.data_dir", str(tmp_path / "nowhere")]  # fmt: skip
    with pytest.raises(ConfigError) as error:
        build_cli(args)
    message = str(error.value)
    assert message.endswith(f"{tmp_path / 'nowhere'}: data_dir not found") and "\n" not in message, message
