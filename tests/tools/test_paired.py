"""tools/paired.py: models from separate runs compared on the same items, from their prediction files."""

from __future__ import annotations

import json

import pytest

from tools.paired import PredictionsError, paired


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(flags, task="arithmetic"):
    return [{"task": task, "prompt": f"q{i}", "generation": "...", "answer": "1", "correct": f} for i, f in enumerate(flags)]


def test_scores_and_mcnemar_from_two_prediction_files(tmp_path):
    # a right on 9, b on 5; a alone right on 5 items, b alone on 1: exact p = 2 * P(X <= 1 | n=6) = 14/64
    a = [True] * 4 + [True] * 5 + [False] * 1 + [False] * 2
    b = [True] * 4 + [False] * 5 + [True] * 1 + [False] * 2
    first = write(tmp_path / "bf16" / "predictions.jsonl", rows(a))
    second = write(tmp_path / "nf4" / "predictions.jsonl", rows(b))
    results = paired([str(first), str(second)], output=str(tmp_path / "report"))
    assert results["entries"] == ["bf16", "nf4"]  # named by their folders
    assert results["scores"]["bf16"]["pooled"]["correct"] == 9 and results["scores"]["nf4"]["pooled"]["correct"] == 5
    test = results["mcnemar"][0]
    assert (test["only_first"], test["only_second"]) == (5, 1)
    assert test["p_value"] == pytest.approx(14 / 64)
    assert test["verdict"] == "tie"
    assert json.loads((tmp_path / "report" / "results.json").read_text())["mcnemar"][0]["p_value"] == test["p_value"]
    assert "| bf16 | nf4 | 5 | 1 |" in (tmp_path / "report" / "results.md").read_text()


def test_per_task_scores_and_evaluate_generations_by_entry(tmp_path):
    generations = tmp_path / "eval" / "generations.jsonl"
    lines = [
        {"entry": entry, "item": i, "task": task, "answer": "x", "correct": ok, "generation": "..."}
        for entry, flags in (("base", [False, False, True, True]), ("s2ft", [True, True, True, False]))
        for i, (task, ok) in enumerate(zip(["gsm8k", "gsm8k", "aqua", "aqua"], flags))
    ]
    write(generations, lines)
    results = paired([f"base={generations}", f"s2ft={generations}"])
    assert results["tasks"] == ["gsm8k", "aqua"]
    assert results["scores"]["s2ft"]["tasks"]["gsm8k"]["correct"] == 2
    assert results["scores"]["base"]["tasks"]["aqua"]["correct"] == 2
    assert results["scores"]["s2ft"]["average"]["accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_files_of_other_items_are_refused_naming_the_item(tmp_path):
    first = write(tmp_path / "a" / "p.jsonl", rows([True, False, True]))
    other = rows([True, False, True])
    other[1]["prompt"] = "another question"
    second = write(tmp_path / "b" / "p.jsonl", other)
    with pytest.raises(PredictionsError, match=r"b/p.jsonl, item 2: task/prompt differs"):
        paired([str(first), str(second)])
    shorter = write(tmp_path / "c" / "p.jsonl", rows([True, False]))
    with pytest.raises(PredictionsError, match="holds 2 items"):
        paired([str(first), str(shorter)])


def test_bad_files_are_refused_naming_line_and_field(tmp_path):
    good = write(tmp_path / "a" / "p.jsonl", rows([True]))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "p.jsonl").write_text('{"task": "t", "prompt": "q0"}\n')
    with pytest.raises(PredictionsError, match=r"line 1: field 'correct' must be a bool"):
        paired([str(good), str(tmp_path / "b" / "p.jsonl")])
    (tmp_path / "b" / "p.jsonl").write_text("{not json\n")
    with pytest.raises(PredictionsError, match="line 1: not JSON"):
        paired([str(good), str(tmp_path / "b" / "p.jsonl")])
    with pytest.raises(PredictionsError, match="no such prediction file"):
        paired([str(good), str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="two prediction files are named 'a'"):
        paired([str(good), str(good)])
