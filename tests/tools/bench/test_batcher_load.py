"""tools.bench.batcher_load on a tiny model: every setting serves the same load, and the prefix cache
takes the chat template's shared start."""

import json

from tools.bench.batcher_load import batcher_load


def test_every_setting_serves_the_same_load(tiny_llama_dir, tmp_path, monkeypatch):
    from zoo.inference.prefix_cache import PrefixCache

    monkeypatch.setattr(PrefixCache.__init__, "__defaults__", (4,))  # the tiny chat template shares 8 tokens
    output = tmp_path / "load.json"
    report = batcher_load(
        str(output), str(tiny_llama_dir), adapters=4, clients=4, requests=3, max_tokens=3, lora_rank=4,
        threads=[1], prefix_cache=[False, True], admit_shares=[1.25, 5.0], rounds=1,
    )  # fmt: skip
    settings = report["settings"]
    assert list(settings) == [f"1 thread, prefix cache {c}, admit share {s:g}" for c in ("off", "on") for s in (1.25, 5.0)]
    assert {s["generated"] for s in settings.values()} == {4 * 3 * 3}  # EOS ignored: the same work
    assert all(s["tokens_per_s"] > 0 and 1 <= s["mean_rows"] <= 4 for s in settings.values())
    off, on = settings["1 thread, prefix cache off, admit share 1.25"], settings["1 thread, prefix cache on, admit share 1.25"]
    assert off["reused_prompt_tokens"] == 0 < on["reused_prompt_tokens"] < on["prompt_tokens"]
    assert json.loads(output.read_text())["settings"] == settings
