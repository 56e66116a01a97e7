"""tools/bench/serve_http.py: the HTTP load test end to end on a tiny model, and the docs section it writes."""

from __future__ import annotations

import json

import pytest

from tools.bench.serve import bench_serve
from tools.bench.serve_http import SECTION, http_docs_section, verdict

pytestmark = pytest.mark.slow  # runs a benchmark end to end (two servers)


def test_the_load_test_runs_both_servers_at_each_number_of_clients(tiny_llama_dir, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Serving\n\nkeep me\n")
    results = bench_serve(
        output=str(tmp_path / "http.json"),
        docs=str(docs),
        http=True,
        base_model=str(tiny_llama_dir),
        clients=[1, 3],
        http_adapters=4,  # one of each method
        rounds=2,
        max_tokens=3,
        lora_rank=4,
        threads=1,
    )
    assert json.loads((tmp_path / "http.json").read_text()) == results
    assert [level["clients"] for level in results["levels"]] == [1, 3]
    for level in results["levels"]:
        for server in ("one_at_a_time", "batched"):
            measured = level[server]
            assert measured["failures"] == 0 and measured["requests"] == 2 * level["clients"], measured
            assert measured["requests_per_s"] > 0 and 0 < measured["completion_tokens"] <= 3 * measured["requests"]
        assert level["one_at_a_time"]["most_together"] == 1
        for server in ("one_at_a_time", "batched"):  # CPU counted: the loop did the model's work
            cpu = level[server]["cpu_s_per_request"]
            assert set(cpu) == {"decoding_loop", "rest_of_server", "clients"} and cpu["decoding_loop"] > 0, cpu
            assert min(cpu.values()) >= 0
        assert level["speedup"] == level["batched"]["requests_per_s"] / level["one_at_a_time"]["requests_per_s"]
    text = docs.read_text()
    assert "keep me" in text and text.count(SECTION) == 1 and "| 3 |" in text and "target" in text


def fake_results(clients, speedup, failures):
    measured = {"requests_per_s": 1.0, "tokens_per_s": 10.0, "p50_s": 1.0, "p99_s": 2.0, "failures": 0}
    level = {
        "clients": clients,
        "one_at_a_time": {**measured, "most_together": 1},
        "batched": {**measured, "requests_per_s": speedup, "failures": failures, "most_together": clients},
        "speedup": speedup,
    }
    config = {
        "output": "x.json",
        "base_model": "m",
        "adapters": 8,
        "lora_rank": 16,
        "max_tokens": 32,
        "rounds": 3,
        "threads": 2,
        "clients": [clients],
    }
    return {
        "date": "d",
        "torch": "t",
        "cpu": "c",
        "load_average": [0.1, 0.2],
        "s2ft_adapters": "s2ft plugin",
        "config": config,
        "levels": [level],
    }


@pytest.mark.parametrize(
    ("clients", "speedup", "failures", "met"),
    [(64, 6.5, 0, True), (64, 5.5, 0, False), (64, 8.0, 1, False), (8, 9, 0, False)],
)
def test_the_verdict_holds_the_run_to_the_target(clients, speedup, failures, met):
    results = fake_results(clients, speedup, failures)
    assert verdict(results).endswith("is met." if met else "is not met.")
    section = http_docs_section(results)
    assert section.startswith(SECTION) and f"| {clients} | 1.00 | {speedup:.2f} | {speedup:.2f}× |" in section
