"""tools.study seeds: evaluations made outside a study (one results file per seed) summarised as a
study's are: per-seed accuracies, entries every seed has, McNemar pooled over seeds and items."""

import json

import pytest

from tools.study import seeds


def _results(outcomes: dict[str, list[bool]], tasks: list[str]) -> dict:
    return {"entries": list(outcomes), "item_tasks": tasks, "outcomes": {"correct": outcomes}}


def test_seeds_pool_items_and_keep_common_entries(tmp_path):
    tasks = ["a", "a", "b", "b"]
    files = {
        0: _results({"base": [False] * 4, "new": [True, True, True, False], "old": [True, False, False, False]}, tasks),
        1: _results(
            {
                "base": [False] * 4,
                "new": [True, False, True, True],
                "old": [False, False, True, False],
                "lora": [True] * 4,
            },
            tasks,
        ),
    }
    specs = []
    for seed, results in files.items():
        path = tmp_path / f"seed-{seed}.json"
        path.write_text(json.dumps(results))
        specs.append(f"{seed}={path}")

    summary = seeds(specs, str(tmp_path / "out"), title="recipes")

    assert summary["seeds"] == [0, 1] and summary["entries"] == ["base", "new", "old"]  # lora: seed 1 only
    assert summary["scores"]["new"]["tasks"]["a"]["values"] == [1.0, 0.5]
    assert summary["scores"]["new"]["average"]["values"] == [0.75, 0.75]
    pair = next(p for p in summary["pairs"] if (p["first"], p["second"]) == ("new", "old"))
    assert pair["pooled_items"] == 8 and (pair["only_first"], pair["only_second"]) == (4, 0)
    assert pair["difference"] == pytest.approx(0.5)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["files"] == {"0": str(tmp_path / "seed-0.json"), "1": str(tmp_path / "seed-1.json")}
    assert "over seeds 0, 1" in (tmp_path / "out" / "results.md").read_text()


def test_seeds_refuse_bad_input(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"entries": ["base"], "item_tasks": ["a"]}))
    with pytest.raises(ValueError, match="no per-item 'outcomes'"):
        seeds([f"0={path}"], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="the seed an integer"):
        seeds([f"first={path}"], str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        seeds([f"0={tmp_path / 'missing.json'}"], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
