"""Fault 1: ``fit`` is given an adapter folder it cannot or must not write.

Each refusal comes before the model loads and before the first step, not after training.

| case                                      | what the user sees                                   | kept on disk                 |
| ----------------------------------------- | ---------------------------------------------------- | ---------------------------- |
| ``adapter_dir`` is a non-empty folder of  | OutputPathError: "... holds no adapter.json;         | the folder, untouched        |
| something else                            | refusing to replace it"                              |                              |
| ``adapter_dir`` cannot be created (a file | OutputPathError: "cannot create ...: ... is a file"  | the file, untouched          |
| is in the way)                            |                                                      |                              |
| ``adapter_dir`` holds an adapter          | OutputPathError: "... already exists; pass           | the old adapter, untouched   |
|                                           | --model.overwrite true to replace it"                |                              |
| the same with ``--model.overwrite true``  | the run trains and replaces it                       | the new adapter              |
"""

from __future__ import annotations

import json

import pytest
from faults.harness import quickstart_args

from zoo import module as zoo_module
from zoo.cli import build_cli
from zoo.outputs import OutputPathError


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the base model is loaded: a refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded before the output folder was checked")

    monkeypatch.setattr(zoo_module, "load_model", refuse)


def test_a_folder_of_something_else_is_refused_before_training(tiny_llama_dir, tmp_path, no_model_load):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="holds no adapter.json; refusing to replace it"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.adapter_dir", str(notes)))
    assert [p.name for p in notes.iterdir()] == ["todo.txt"] and (notes / "todo.txt").read_text() == "keep me"


def test_an_adapter_dir_that_cannot_be_created_is_refused_before_training(tiny_llama_dir, tmp_path, no_model_load):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputPathError, match="is a file"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.adapter_dir", str(blocker / "adapter")))
    assert blocker.read_text() == "a file where a folder should be"


def test_an_existing_adapter_is_replaced_only_with_overwrite(tiny_llama_dir, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    build_cli(quickstart_args(tiny_llama_dir, tmp_path / "first", 1, "--model.adapter_dir", str(adapter)))
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}

    with monkeypatch.context() as patch:
        patch.setattr(zoo_module, "load_model", lambda *a, **k: pytest.fail("loaded before the refusal"))
        with pytest.raises(OutputPathError, match="already exists; pass --model.overwrite true"):
            build_cli(quickstart_args(tiny_llama_dir, tmp_path / "second", 2, "--model.adapter_dir", str(adapter)))
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before

    build_cli(quickstart_args(tiny_llama_dir, tmp_path / "third", 2, "--model.adapter_dir", str(adapter),
                              "--model.overwrite", "true"))  # fmt: skip
    assert json.loads((adapter / "adapter.json").read_text())["info"]["global_step"] == 2
