"""tools/bench/loss.py: both losses timed on the quickstart's batches, table and docs written."""

import json

import pytest

from tools.bench.loss import bench_loss

pytestmark = pytest.mark.slow  # runs a benchmark end to end


def test_bench_loss_times_both_losses_and_writes_its_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    results = bench_loss(batches=2, rounds=1, layers=2, output=str(tmp_path / "loss.json"), docs=str(docs))
    written = json.loads((tmp_path / "loss.json").read_text())
    assert written["speedup"] == pytest.approx(results["speedup"])
    labels, response = written["losses"]["labels="], written["losses"]["response tokens"]
    assert len(labels["steps"]) == len(response["steps"]) == 1
    assert 0 < written["response_share"] < 1
    # logits at fewer positions: fewer bytes saved for backward (the 49k-wide logits dominate at 2 layers)
    assert response["saved_bytes"] < labels["saved_bytes"]
    text = docs.read_text()
    assert "## Other\n\nkept" in text and "## Response-token loss" in text and "faster steps" in text
