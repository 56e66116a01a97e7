"""tools.bench.generation on a tiny model: both paths time the same batches and give the same answers."""

import json

from tools.bench.generation import bench


def test_both_paths_answer_the_quickstarts_batches_alike(tiny_llama_dir, tmp_path):
    out = tmp_path / "generation.json"
    results = bench(model=str(tiny_llama_dir), num_test=6, precisions=("float32",), output=str(out))
    row = results["float32"]
    assert results["items"] == 6 and results["batch_size"] == 100  # the quickstart's eval batch
    assert row["same_answers"] == 6
    assert set(row["seconds"]) == set(row["cpu_seconds"]) == {"generate", "greedy_answers"}
    assert json.loads(out.read_text())["float32"]["ratio"] == row["ratio"]
