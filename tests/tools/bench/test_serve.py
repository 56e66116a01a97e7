"""tools/bench/serve.py: one setting end to end on a tiny shape, and the docs section it writes."""

from __future__ import annotations

import pytest

import torch
from tiny_models import COMMON
from transformers import LlamaConfig

from tools.bench.serve import SECTION, Setting, bench_setting, docs_section, ratio_table, update_docs

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


def test_one_tiny_setting_end_to_end():
    config = LlamaConfig(**{**COMMON, "num_key_value_heads": 2, "head_dim": 16})
    setting = Setting("tiny", "tiny Llama", torch.device("cpu"), torch.float32, config)
    result = bench_setting(
        setting, [2, 4], batch_size=4, prompt_tokens=4, new_tokens=2, repeats=1, switch_adapters=2, lora_rank=4, seed=0
    )
    assert all(result["switch_ms"][row] > 0 for row in ("s2ft", "lora", "peft_lora"))
    assert [row["adapters"] for row in result["throughput"]] == [2, 4]
    for row in result["throughput"]:
        assert set(row["tokens_per_s"]) == {"s2ft", "lora", "peft_lora", "fused"}
        assert row["s2ft_vs_lora"] > 0 and row["s2ft_vs_peft_lora"] > 0 and row["s2ft_vs_fused"] > 0


def test_docs_section_replaces_only_the_serving_section(tmp_path):
    row = {
        "adapters": 8,
        "tokens_per_s": {"s2ft": 2.0, "lora": 1.0, "peft_lora": 0.5, "fused": 2.5},
        "s2ft_vs_lora": 2.0,
        "s2ft_vs_peft_lora": 4.0,
        "s2ft_vs_fused": 0.8,
    }
    setting = {
        "setting": "cpu",
        "model": "m",
        "device": "d",
        "s2ft_adapters": "s2ft plugin",
        "switch_ms": {"s2ft": 1.0, "lora": 9.0, "peft_lora": 10.0},
        "switch_speedup": 9.0,
        "throughput": [row],
    }
    config = {
        "output": "x.json",
        "batch_size": 8,
        "prompt_tokens": 4,
        "new_tokens": 4,
        "repeats": 1,
        "lora_rank": 32,
        "switch_adapters": 2,
    }
    results = {"date": "today", "torch": "2", "config": config, "settings": [setting]}
    assert "| cpu | 1.00 | 9.00 | 10.00 | 9.0× | 8 | 2.0 | 1.0 | 0.5 | 2.5 | 2.00× | 4.00× | 0.80× |" in ratio_table(results)
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Training\n\nkeep me\n")
    update_docs(path, docs_section(results))
    update_docs(path, docs_section(results))  # again: replaced, not appended twice
    text = path.read_text()
    assert text.count(SECTION) == 1 and "keep me" in text and text.index("## Training") < text.index(SECTION)
    path.write_text(text + "\n## Later\n\nalso kept\n")
    update_docs(path, docs_section(results))
    assert "also kept" in path.read_text() and path.read_text().count(SECTION) == 1
