"""Fault 7: an adapter records its base model as a relative path, and is used from elsewhere.

| case                                          | what the user sees                                      | network    |
| --------------------------------------------- | ------------------------------------------------------- | ---------- |
| saved with ``--model.model models/tiny``      | works from any directory: adapter.json records          | not asked  |
|                                               | ``../../../models/tiny``, relative to the adapter       |            |
| an older adapter recording ``./models/tiny``  | AdapterError at once: "./models/tiny: no such model     | not asked  |
| (relative to where it was trained)            | folder ... Pass --base_model"                           |            |
| the same with ``base_model`` given            | works                                                   | not asked  |
| a recorded ``org/name`` that is not local,    | AdapterError at once, suggesting --base_model           | offline:   |
| offline (HF_HUB_OFFLINE=1)                    |                                                         | not asked  |
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import pytest

from tools.export import export
from zoo.adapter import META_FILE, AdapterError, load_adapter, save_adapter


@pytest.fixture
def project(tiny, tmp_path, monkeypatch):
    """``<tmp>/project/models/tiny`` (a copy of the tiny base) and a working directory there."""
    root = tmp_path / "project"
    shutil.copytree(tiny.folder, root / "models" / "tiny")
    monkeypatch.chdir(root)
    (tmp_path / "elsewhere").mkdir()
    return root


def recorded_base(folder) -> str:
    return json.loads((folder / META_FILE).read_text())["base"]["name_or_path"]


def test_a_relative_base_is_recorded_beside_the_adapter_and_found_from_anywhere(tiny, project, tmp_path, monkeypatch):
    adapter = tiny.adapter("s2ft")
    adapter.base = replace(adapter.base, name_or_path="models/tiny")  # as `--model.model models/tiny` records it
    folder = save_adapter(adapter, "runs/math/adapter")
    assert recorded_base(folder) == "../../../models/tiny"

    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_adapter(project / folder).base.name_or_path == str(project / "models" / "tiny")
    export(adapter=str(project / folder), output=str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "config.json").is_file()


def test_an_unresolvable_local_base_is_refused_at_once_without_the_hub(tiny, project, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = save_adapter(tiny.adapter("s2ft"), "runs/math/adapter")
    meta = json.loads((folder / META_FILE).read_text())
    meta["base"]["name_or_path"] = "./models/tiny"  # an older adapter: relative to where it was trained
    (folder / META_FILE).write_text(json.dumps(meta))

    monkeypatch.chdir(tmp_path / "elsewhere")
    with monkeypatch.context() as patch:
        patch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("asked the hub"))
        with pytest.raises(AdapterError, match=r"\./models/tiny: no such model folder\nPass --base_model"):
            export(adapter=str(project / folder), output=str(tmp_path / "exported"))
    export(adapter=str(project / folder), output=str(tmp_path / "exported"), base_model=str(project / "models/tiny"))
    assert (tmp_path / "exported" / "config.json").is_file()


def test_an_offline_machine_does_not_wait_for_the_hub(tiny, tmp_path):
    adapter = tiny.adapter("s2ft")
    adapter.base = replace(adapter.base, name_or_path="someone/not-here")
    folder = save_adapter(adapter, tmp_path / "adapter")
    start = time.monotonic()
    with pytest.raises(AdapterError, match="Pass --base_model"):
        export(adapter=str(folder), output=str(tmp_path / "exported"))  # HF_HUB_OFFLINE=1 (tests/conftest.py)
    assert time.monotonic() - start < 10
