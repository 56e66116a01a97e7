"""The adapter folder format: round trip, atomic writes, clear refusals."""

import json

import pytest
import torch

from tiny_models import tiny_model
from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter, save_adapter


def make_adapter(model=None) -> Adapter:
    model = model or tiny_model()
    return Adapter(
        method="full",
        config={"include": ".*", "exclude": None},
        selection=["model.norm.weight"],
        base=BaseModelInfo.of(model, "tiny"),
        tensors={"model.norm.weight": torch.arange(64, dtype=torch.float32)},
        info={"global_step": 3},
    )


def test_round_trip(tmp_path):
    adapter = make_adapter()
    save_adapter(adapter, tmp_path / "a")
    loaded = load_adapter(tmp_path / "a")
    assert loaded.method == "full" and loaded.selection == ["model.norm.weight"]
    assert loaded.base == adapter.base
    torch.testing.assert_close(loaded.tensors["model.norm.weight"], adapter.tensors["model.norm.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folder left


def test_overwrite_replaces_and_refuses_foreign_folder(tmp_path):
    save_adapter(make_adapter(), tmp_path / "a")
    adapter = make_adapter()
    adapter.info["global_step"] = 9
    save_adapter(adapter, tmp_path / "a")
    assert load_adapter(tmp_path / "a").info["global_step"] == 9
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(AdapterError, match="not an adapter folder"):
        save_adapter(make_adapter(), tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_failed_save_leaves_nothing(tmp_path):
    class Broken:
        def ftzoo_save_adapter_files(self, adapter, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_adapter(make_adapter(), tmp_path / "a", hooks=Broken())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "adapter.json").unlink(), "adapter.json is missing"),
        (lambda d: (d / "adapter.json").write_text("{oops"), "malformed JSON at line 1"),
        (lambda d: (d / "adapter.safetensors").write_bytes(b"garbage"), "adapter.safetensors: its SHA-256 is"),
        (lambda d: (_edit(d, sha256={}), (d / "adapter.safetensors").write_bytes(b"garbage")), "not a readable safetensors"),
        (lambda d: _edit(d, format_version=99), "format_version 99 is not supported"),
        (lambda d: _edit(d, format="other"), "not an ftzoo adapter"),
        (lambda d: _edit(d, method=3), "field 'method' must be a str"),
    ],
)
def test_bad_folders_are_refused_clearly(tmp_path, damage, message):
    save_adapter(make_adapter(), tmp_path / "a")
    damage(tmp_path / "a")
    with pytest.raises(AdapterError, match=message):
        load_adapter(tmp_path / "a")


def test_missing_folder(tmp_path):
    with pytest.raises(AdapterError, match="no such adapter folder"):
        load_adapter(tmp_path / "nope")


def _edit(folder, **changes):
    meta = json.loads((folder / "adapter.json").read_text())
    meta.update(changes)
    (folder / "adapter.json").write_text(json.dumps(meta))


def test_base_identity_tells_models_apart():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    info_a = BaseModelInfo.of(a, "a")
    info_a.check_same(BaseModelInfo.of(tiny_model(seed=0), "a-again"), what="adapter")
    info_a.check_same(BaseModelInfo.of(tiny_model(seed=0, dtype=torch.bfloat16), "bf16"), what="adapter")
    with pytest.raises(AdapterError, match="other weights"):
        info_a.check_same(BaseModelInfo.of(b, "b"), what="adapter")
    with pytest.raises(AdapterError, match="hidden_size=64"):
        info_a.check_same(BaseModelInfo.of(tiny_model(hidden_size=32), "narrow"), what="adapter")
    with pytest.raises(AdapterError, match="MistralForCausalLM"):
        info_a.check_same(BaseModelInfo.of(tiny_model("mistral"), "m"), what="adapter")
