"""tools/bench/gpu.py: the GPU run's plumbing end to end, on a CPU at a tiny shape (seconds)."""

from __future__ import annotations

import json

import pytest

from tools.bench.gpu import OFFICIAL_H100, SECTION, TRAIN_METHODS, bench_gpu, train_table


def test_gpu_run_writes_its_section_and_keeps_the_others(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Training\n\nkept as is\n\n## Serving over HTTP\n\nalso kept\n")
    out = tmp_path / "gpu.json"
    results = bench_gpu(
        docs=str(docs), output=str(out), device="cpu", tiny=True, layers=(1,), seq_len=16, batch_size=2, steps=1,
        warmup=0, serve_layers=2, adapter_counts=(2,), serve_batch_size=4, prompt_tokens=4, new_tokens=2, repeats=1,
    )  # fmt: skip
    assert json.loads(out.read_text())["train"] == results["train"]
    rows = {row["method"]: row for row in results["train"]}
    assert set(rows) == set(TRAIN_METHODS) and not any(row.get("oom") for row in rows.values())
    assert all(row["bytes"]["total"] > 0 and row["time"]["step"] > 0 for row in rows.values())
    assert rows["lora"]["bytes"]["total"] == rows["peft_lora"]["bytes"]["total"]
    assert rows["s2ft"]["bytes"]["total"] < min(rows["lora"]["bytes"]["total"], rows["full"]["bytes"]["total"])
    text = docs.read_text()
    assert "## Training\n\nkept as is\n" in text and "## Serving over HTTP\n\nalso kept\n" in text
    section = text[text.index(SECTION) :]
    assert "| 1 | 16 × 2 | s2ft |" in section and "S²FT/fused" in section  # both tables
    assert results["serve"]["throughput"][0]["adapters"] == 2


def test_official_anchors_stand_beside_the_rows_at_their_shape():
    row = {"layers": 32, "seq_len": 1024, "batch_size": 2, "trainable": 1, "bytes": {"total": 2**30},
           "cuda_max_allocated": 2**30, "time": {"forward": 0.1, "backward": 0.1, "optimizer": 0.01, "step": 0.21}}  # fmt: skip
    rows = [{**row, "method": m} for m in ("full", "lora", "s2ft")] + [{**row, "layers": 4, "method": "s2ft"}]
    lines = train_table({"train": rows})
    assert lines[2].endswith(f"| {OFFICIAL_H100['full'][0]} / {OFFICIAL_H100['full'][1]} |")
    assert lines[4].endswith(f"| {OFFICIAL_H100['s2ft'][0]} / {OFFICIAL_H100['s2ft'][1]} |")
    assert lines[5].endswith("| - |")  # 4 layers: no anchor


def test_llama_shape_needs_a_gpu():
    with pytest.raises(ValueError, match="needs a GPU; use --tiny true"):
        bench_gpu(docs=None, device="cpu")
