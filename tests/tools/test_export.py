"""tools/export.py: the folder loads in plain transformers (no ftzoo) and gives the fused logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_adapters import METHODS

from tools.export import export
from zoo.adapter import TENSORS_FILE, AdapterError
from zoo.inference import hooks_for
from zoo.inference.export import _clean_config

IDS = [[5, 70, 80, 90, 100, 33, 34, 35]]

PLAIN_LOAD = textwrap.dedent(
    """
    import sys
    for name in ("zoo", "plugins", "tools"):
        sys.modules[name] = None  # importing ftzoo now fails: the folders must not need it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for folder in sys.argv[1:]:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            torch.save(model(torch.tensor({ids})).logits, folder + ".logits.pt")
    """
).format(ids=IDS)


def test_exported_folders_load_in_plain_transformers_with_equal_logits(tiny, tmp_path):
    methods = [m for m in METHODS if m != "dora"]  # dora: same path as lora
    folders = {}
    for method in methods:
        adapter = tiny.saved(method, tmp_path / f"{method}-adapter", 0)
        folders[method] = export(str(adapter), str(tmp_path / method))
        config = json.loads((folders[method] / "config.json").read_text())
        assert "quantization_config" not in config and "auto_map" not in config
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, *map(str, folders.values())], check=True)  # one start for all
    for method, folder in folders.items():
        adapter = tiny.adapter(method, 0)
        model = tiny.fresh()
        hooks_for(adapter).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
        with torch.no_grad():
            expected = model(torch.tensor(IDS)).logits
        torch.testing.assert_close(torch.load(f"{folder}.logits.pt"), expected, msg=method)


def test_config_leftovers_of_a_gguf_base_are_removed(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gguf"}}))
    _clean_config(path)
    assert json.loads(path.read_text()) == {"model_type": "llama"}


def test_export_refuses_bad_input_and_writes_nothing(tiny, other_base, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(AdapterError, match="no such adapter folder"):
        export(str(tmp_path / "missing"), str(out))
    with pytest.raises(AdapterError, match="other weights"):
        export(str(tiny.saved("merged", tmp_path / "a", 0)), str(out), base_model=str(other_base.folder))
    broken = tiny.saved("merged", tmp_path / "b", 0)
    (broken / TENSORS_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(AdapterError, match=f"{TENSORS_FILE}: its SHA-256 is .*changed or damaged"):
        export(str(broken), str(out))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export(str(tiny.saved("merged", tmp_path / "c", 0)), str(out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
