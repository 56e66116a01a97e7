"""tools.bench.long_prompt on a tiny model: each setting prefills the long prompt while the streams
decode, within the KV budget; a time share gives chunks that start small and adapt."""

from tools.bench.long_prompt import long_prompt


def test_every_setting_prefills_the_long_prompt_beside_the_streams(tiny_llama_dir):
    results = long_prompt(str(tiny_llama_dir), chunks=[0, 64], shares=[1.5], streams=4, prompt_tokens=300)
    assert [(r["chunk"], r["share"]) for r in results] == [(0, None), (64, None), (256, 1.5)]
    whole, fixed, shared = results
    assert whole["steps_to_join"] == 1 and fixed["steps_to_join"] == -(-300 // 64)
    assert fixed["chunk_tokens_max"] == 64 and shared["steps_to_join"] >= 2  # the first timed chunk: 16 tokens
    assert all(r["running_beside"] == 4 and r["kv_peak_gib"] <= r["kv_budget_gib"] for r in results)
