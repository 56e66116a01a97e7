"""tools/switch.py: after any sequence of switches the weights are exactly base + the active adapter."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hf_generate import hf_greedy
from tiny_adapters import METHODS
from tiny_models import tiny_tokenizer

from tools.switch import switch
from zoo.adapter import AdapterError
from zoo.inference import AdapterSwitcher, encode_prompts, hooks_for


def fused(tiny, adapter):
    model = tiny.fresh()
    if adapter is not None:
        hooks_for(adapter).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    return model.state_dict()


def assert_weights_equal(model, expected):
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("method", METHODS)
def test_any_switch_sequence_leaves_base_plus_the_active_adapter(tiny, method):
    adapters = {f"{method}-{seed}": tiny.adapter(method, seed) for seed in range(3)}
    expected = {name: fused(tiny, a) for name, a in adapters.items()} | {None: tiny.model.state_dict()}
    switcher = AdapterSwitcher(tiny.fresh(), tiny.info)
    for name, adapter in adapters.items():
        switcher.add(name, adapter)
    order = list(adapters) * 2 + [None]
    random.Random(0).shuffle(order)
    for name in order + [list(adapters)[0], list(adapters)[0], None]:
        seconds = switcher.activate(name)
        assert seconds >= 0 and switcher.active == name
        assert_weights_equal(switcher.model, expected[name])


def test_switching_across_methods(tiny):
    adapters = {m: tiny.adapter(m, 5) for m in METHODS}
    switcher = AdapterSwitcher(tiny.fresh(), tiny.info)
    for name, adapter in adapters.items():
        switcher.add(name, adapter)
    for name in [*adapters, *reversed(list(adapters)), "base"]:
        switcher.activate(name)
        assert_weights_equal(switcher.model, fused(tiny, adapters.get(name)))


def test_switch_tool_answers_as_the_fused_model(tiny, tmp_path):
    paths = [f"a={tiny.saved('full', tmp_path / 'a', 0)}", f"b={tiny.saved('merged', tmp_path / 'b', 1)}"]
    report = switch(
        paths, prompt="abc", sequence=["a", "b", "base", "a"], max_new_tokens=5, output=str(tmp_path / "r.json")
    )
    assert [s["to"] for s in report["switches"]] == ["a", "b", "base", "a"]
    assert set(report["latency_ms"]) == {"a", "b", "base"}
    assert json.loads((tmp_path / "r.json").read_text())["switches"][0]["to"] == "a"
    tokenizer = tiny_tokenizer()
    model = tiny.fresh()
    hooks_for(tiny.adapter("full", 0)).ftzoo_fuse_adapter(model=model, adapter=tiny.adapter("full", 0), scale=1.0)
    tokens, _ = hf_greedy(model, tokenizer, encode_prompts(tokenizer, ["abc"], False, "cpu"), 5)
    assert report["switches"][0]["answer"] == report["switches"][3]["answer"]
    assert report["switches"][0]["answer"] == tokenizer.decode(tokens[0], skip_special_tokens=True)


def test_switch_refuses_bad_input_and_writes_nothing(tiny, other_base, tmp_path):
    good = f"a={tiny.saved('merged', tmp_path / 'a', 0)}"
    out = tmp_path / "report.json"
    with pytest.raises(AdapterError, match="other weights"):
        switch([good, f"o={other_base.saved('merged', tmp_path / 'o', 0)}"], output=str(out))
    with pytest.raises(AdapterError, match="unknown adapters"):
        switch([good], sequence=["a", "nope"], output=str(out))
    with pytest.raises(AdapterError, match="no such adapter folder"):
        switch([good, f"m={tmp_path / 'missing'}"], output=str(out))
    assert not out.exists()
    with pytest.raises(ValueError, match="named 'a'"):
        switch([good, good])
