"""Fault 14: adapter and model files damaged after they were written (a disk error, a copy cut short, an edit).

| case                                          | what the user sees                                          |
| --------------------------------------------- | ----------------------------------------------------------- |
| ``adapter.json`` that is not UTF-8            | AdapterError "<folder>/adapter.json: not UTF-8 text (byte   |
|                                               | 12 is b'\\xff') ..."                                        |
| one flipped byte in ``adapter.safetensors``   | AdapterError "<file>: its SHA-256 is ..., adapter.json      |
| (it still parses: values changed silently)    | records ...: the file was changed or damaged after it was   |
|                                               | saved ..." (``save_adapter`` records the SHA-256 of every   |
|                                               | ``.safetensors`` file; ``load_adapter`` checks it)          |
| ``adapter.safetensors`` cut short             | the same, naming the file                                   |
| an adapter saved before checksums existed     | loads as before                                             |
| an exported model whose ``model.safetensors`` | ModelLoadError "could not load '<folder>': a weights file   |
| is cut short                                  | is damaged (...); its weights files: <folder>/model.safe... |
"""

from __future__ import annotations

import json
import shutil

import pytest

from zoo.adapter import CHECKSUMS, META_FILE, TENSORS_FILE, AdapterError, file_sha256, load_adapter, save_adapter
from zoo.inference import hooks_for
from zoo.loading import ModelLoadError, load_model


@pytest.fixture
def saved(tiny, tmp_path):
    """A LoRA adapter saved with its method's extra files (the PEFT copy)."""
    adapter = tiny.adapter("lora")
    return save_adapter(adapter, tmp_path / "adapter", hooks=hooks_for(adapter))


def test_save_records_the_sha256_of_every_tensor_file(saved):
    recorded = json.loads((saved / META_FILE).read_text())[CHECKSUMS]
    files = sorted(p.name for p in saved.glob("*.safetensors"))
    assert sorted(recorded) == files and TENSORS_FILE in files and len(files) == 2  # LoRA's PEFT file too
    assert all(recorded[name] == file_sha256(saved / name) for name in files)


def test_an_adapter_json_that_is_not_utf8_is_named(saved):
    meta = saved / META_FILE
    meta.write_bytes(meta.read_bytes()[:12] + b"\xff" + meta.read_bytes()[13:])
    with pytest.raises(AdapterError, match=rf"^{meta}: not UTF-8 text \(byte 12 is b'\\xff'\)"):
        load_adapter(saved)


def test_a_flipped_byte_in_the_tensors_is_refused_by_its_checksum(saved):
    tensors = saved / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x01  # in the last tensor's data: the file still parses, a value has changed
    tensors.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match=rf"^{tensors}: its SHA-256 is [0-9a-f]{{16}}\.\.\., {META_FILE} records "
                                           r"[0-9a-f]{16}\.\.\.: the file was changed or damaged after it was saved"):  # fmt: skip
        load_adapter(saved)


def test_a_tensor_file_cut_short_is_named(saved):
    tensors = saved / TENSORS_FILE
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(AdapterError, match=rf"^{tensors}: its SHA-256 is"):
        load_adapter(saved)


def test_an_adapter_saved_before_checksums_loads(saved, tiny):
    meta = json.loads((saved / META_FILE).read_text())
    del meta[CHECKSUMS]
    (saved / META_FILE).write_text(json.dumps(meta))
    assert set(load_adapter(saved).tensors) == set(tiny.adapter("lora").tensors)


def test_a_model_whose_weights_file_is_cut_short_is_named(tiny, tmp_path):
    folder = tmp_path / "exported"
    shutil.copytree(tiny.folder, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"could not load '{folder}': a weights file is damaged \(.*\); its "
                                             rf"weights files: {weights}\. Copy or export the model again"):  # fmt: skip
        load_model(str(folder))
