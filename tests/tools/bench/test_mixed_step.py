"""tools.bench.mixed_step on a tiny model: every setting decodes and is timed."""

from tools.bench.mixed_step import mixed_step


def test_every_setting_is_timed(tiny_llama_dir):
    results = mixed_step(str(tiny_llama_dir), adapters=4, rows=8, steps=1, rounds=1, lora_rank=4)
    assert set(results) == {"base", "s2ft", "lora", "dora", "sparse", "dora, dense deltas", "all 4", "all 4, DoRA dense"}
    assert all(seconds > 0 for seconds in results.values())
