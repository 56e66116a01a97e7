"""zoo/studies.py: mean ± sd over seeds, McNemar pooled over seeds and items, detectable differences."""

import random

import pytest

from zoo.evaluation import mcnemar, minimum_detectable_difference
from zoo.studies import study_markdown, summarize


def _seed(outcomes, tasks):
    return {"entries": list(outcomes), "outcomes": {"acc": outcomes}, "item_tasks": tasks}


def test_summary_pools_seeds_item_by_item():
    tasks = ["a"] * 4 + ["b"] * 4
    per_seed = {
        0: _seed({"base": [True, False] * 4, "m": [True] * 8}, tasks),
        1: _seed({"base": [True, False] * 4, "m": [True] * 6 + [False] * 2}, tasks),
    }
    summary = summarize(per_seed, title="t")
    m = summary["scores"]["m"]
    assert m["tasks"]["a"]["values"] == [1.0, 1.0] and m["tasks"]["b"]["values"] == [1.0, 0.5]
    assert m["average"]["mean"] == pytest.approx(0.875) and m["average"]["sd"] == pytest.approx(0.17678, abs=1e-5)
    (pair,) = summary["pairs"]
    pooled = mcnemar([True, False] * 8, [True] * 14 + [False] * 2)
    assert (pair["only_first"], pair["only_second"], pair["p_value"]) == (pooled.only_first, pooled.only_second, pooled.p_value)
    assert pair["pooled_items"] == 16 and pair["difference"] == pytest.approx(-6 / 16)
    assert pair["detectable"] == minimum_detectable_difference(16, pair["discordant"])
    on_b = pair["tasks"]["b"]  # task b alone (items 4-7), pooled over both seeds: base 4 of 8 right, m 6 of 8
    base_b, m_b = [True, False] * 4, [True] * 4 + [True, True, False, False]
    assert (on_b["only_first"], on_b["only_second"], on_b["pooled_items"]) == (1, 3, 8)
    assert on_b["difference"] == pytest.approx(-2 / 8) and on_b["p_value"] == mcnemar(base_b, m_b).p_value
    assert pair["tasks"]["a"]["only_second"] == 4 and pair["tasks"]["a"]["pooled_items"] == 8
    report = study_markdown(summary)
    assert "| m | 100.0 ± 0.0 | 75.0 ± 35.4 | **87.5 ± 17.7** |" in report
    assert "| base | m | -37.5 |" in report
    assert "| base | m | -50.0 (0.12; " in report and "| a | b |" in report  # the per-task table


def test_more_seeds_detect_smaller_differences():
    rng = random.Random(0)
    tasks = ["a"] * 200

    def run():
        return _seed({"x": [rng.random() < 0.6 for _ in tasks], "y": [rng.random() < 0.6 for _ in tasks]}, tasks)

    one = summarize({0: run()})["pairs"][0]["detectable"]
    three = summarize({0: run(), 1: run(), 2: run()})["pairs"][0]["detectable"]
    assert three < one * 0.7


def test_seeds_scored_on_other_items_are_refused():
    with pytest.raises(ValueError, match="seed 1 was scored on other items than seed 0"):
        summarize({0: _seed({"x": [True]}, ["a"]), 1: _seed({"x": [True]}, ["b"])})
    with pytest.raises(ValueError, match="seed 0 has no outcomes of metric 'acc_norm', only \\['acc'\\]"):
        summarize({0: _seed({"x": [True]}, ["a"])}, metric="acc_norm")
