"""tools.bench.sparse_plan on small shapes: both ways give the same change (checked inside) and are timed."""

from tools.bench.sparse_plan import sparse_plan


def test_every_setting_is_timed_both_ways():
    results = sparse_plan(
        adapters=(2, 3), rows=(1, 2), tokens=(1, 5), density=0.1, repeats=1, rounds=1, shapes=((8, 12), (12, 8))
    )
    assert [(r["adapters"], r["rows"], r["tokens"]) for r in results][:3] == [(2, 1, 1), (2, 1, 5), (2, 2, 1)]
    assert len(results) == 8 and all(r["batched"] > 0 and r["one_by_one"] > 0 for r in results)
