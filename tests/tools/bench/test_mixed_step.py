"""tools.bench.mixed_step on a tiny model: every setting decodes and is timed."""

from tools.bench.mixed_step import mixed_step


def test_every_setting_is_timed(tiny_llama_dir):
    results = mixed_step(str(tiny_llama_dir), adapters=4, rows=8, steps=1, rounds=1, lora_rank=4)
    assert set(results) == {"base", "s2ft", "lora", "dora", "sparse", "dora, dense deltas", "all 4", "all 4, DoRA dense"}
    assert all(seconds > 0 for seconds in results.values())


def test_sparse_one_by_one_adds_the_sparse_settings_unbatched(tiny_llama_dir, monkeypatch):
    from zoo.inference import mixed

    widths = []
    plan_call = mixed.SparsePlan.__call__
    monkeypatch.setattr(
        mixed.SparsePlan, "__call__", lambda *args: widths.append(mixed.SPARSE_BATCH_WIDTH) or plan_call(*args)
    )
    results = mixed_step(
        str(tiny_llama_dir), adapters=8, rows=8, steps=1, rounds=1, lora_rank=4, sparse_one_by_one=True
    )
    assert {"sparse, one by one", "all 8, sparse one by one"} <= set(results)
    assert set(widths) == {0, mixed.SPARSE_BATCH_WIDTH}  # both ways ran, and the width is put back
