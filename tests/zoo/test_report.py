"""zoo/report.py: evaluations of some entries each, merged, score as one evaluation of them all."""

import random

import pytest

from zoo.report import merge_evaluations, score_entries, score_metrics


class _Item:
    def __init__(self, task: str) -> None:
        self.task = task


TASKS = ["a"] * 30 + ["b"] * 20


def _flags(seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < 0.6 for _ in TASKS]


def _evaluation(outcomes: dict[str, dict[str, list[bool]]], title: str, loglikelihood: bool) -> dict:
    items = [_Item(t) for t in TASKS]
    scored = score_metrics(items, outcomes, ["a", "b"]) if loglikelihood else score_entries(items, outcomes["correct"], ["a", "b"])
    entries = list(next(iter(outcomes.values())))
    return {"title": title, "entries": entries, "tasks": ["a", "b"], "item_tasks": TASKS, "outcomes": outcomes,
            "adapters": {e: f"runs/{e}" for e in entries if e != "base"}, "seconds": dict.fromkeys(entries, 1.0), **scored}  # fmt: skip


@pytest.mark.parametrize("loglikelihood", [False, True])
def test_merged_parts_score_as_one_evaluation(loglikelihood):
    metrics = ["acc", "acc_norm"] if loglikelihood else ["correct"]
    flags = {entry: {m: _flags(10 * k + j) for j, m in enumerate(metrics)} for k, entry in enumerate(["base", "x", "y"])}

    def outcomes(entries):
        return {m: {e: flags[e][m] for e in entries} for m in metrics}

    whole = _evaluation(outcomes(["base", "x", "y"]), "whole", loglikelihood)
    merged = merge_evaluations([_evaluation(outcomes(["base", "x"]), "x", loglikelihood),
                                _evaluation(outcomes(["base", "y"]), "y", loglikelihood)], "merged")  # fmt: skip
    assert merged["entries"] == ["base", "x", "y"] and merged["title"] == "merged"
    for key in ("scores", "mcnemar", "outcomes", *(["metrics"] if loglikelihood else [])):
        assert merged[key] == whole[key]
    assert merged["adapters"] == {"x": "runs/x", "y": "runs/y"}


def test_parts_of_other_items_or_outcomes_are_refused():
    base, x = _flags(0), _flags(1)
    first = _evaluation({"correct": {"base": base, "x": x}}, "first", False)
    other_items = {**_evaluation({"correct": {"base": base}}, "other", False), "item_tasks": ["b"] * 50}
    with pytest.raises(ValueError, match="scored other items or metrics"):
        merge_evaluations([first, other_items], "t")
    other_base = _evaluation({"correct": {"base": [not f for f in base]}}, "rescored", False)
    with pytest.raises(ValueError, match="'base' has other correct outcomes in 'rescored'"):
        merge_evaluations([first, other_base], "t")
