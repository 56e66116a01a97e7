"""tools/compare.py end to end on a tiny model: one token budget for every run, the learning
rate chosen on held-out training records, every kept adapter scored on the same items."""

import json

import pytest

from datamodules import ArithmeticDataModule, InstructionDataModule
from tools.compare import Contender, compare

CONTENDERS = [
    Contender("full", "full", lrs=[1e-4, 3e-3]),
    Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25, "strategy": "weight"}, lrs=[3e-3]),
    Contender("lora-r2", "lora", {"r": 2, "alpha": 4}, lrs=[3e-3]),
]


def test_compare_same_budget_same_items(recipe, tmp_path):
    out = tmp_path / "cmp"
    eval_data = ArithmeticDataModule(num_train=0, num_val=0, num_test=10, prompt_style="chat", max_new_tokens=4)
    results = compare(str(recipe), CONTENDERS, eval_data, str(out), steps=3, holdout=8, max_records=6)

    runs = [run for tried in results["runs"].values() for run in tried]
    assert len(runs) == 4
    assert len({(r["tokens"], r["response_tokens"], r["batches"], r["steps"]) for r in runs}) == 1  # one budget
    assert runs[0]["steps"] == 3 and runs[0]["tokens"] > 0
    full = results["runs"]["full"]
    assert results["chosen"]["full"]["lr"] == min(full, key=lambda r: r["holdout_loss"])["lr"]
    assert full[0]["holdout_loss"] != full[1]["holdout_loss"]
    kept = {r["adapter"] for r in results["chosen"].values()}
    for run in runs:  # only the chosen adapters are kept on disk
        assert (tmp_path / run["adapter"]).exists() == (run["adapter"] in kept)
    sizes = {name: run["trainable_parameters"] for name, run in results["chosen"].items()}
    assert sizes["s2ft"] < sizes["full"] and sizes["lora-r2"] < sizes["full"]

    evaluation = results["evaluation"]
    assert evaluation["entries"] == ["base", "full", "s2ft", "lora-r2"]
    rows = [json.loads(line) for line in (out / "eval" / "generations.jsonl").read_text().splitlines()]
    items = {e: [(r["item"], r["answer"]) for r in rows if r["entry"] == e] for e in evaluation["entries"]}
    assert len(items["base"]) == 6 and all(v == items["base"] for v in items.values())
    report = (out / "results.md").read_text()
    assert "learning rates tried" in report and "| s2ft |" in report
    assert (out / "accuracy.png").stat().st_size > 1000

    # A second call resumes: every run.json is reused, nothing is trained again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")}
    again = compare(str(recipe), CONTENDERS, eval_data, str(out), steps=3, holdout=8, max_records=6)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")} == stamps
    assert again["chosen"] == results["chosen"]

    # The same adapters scored by log-likelihood on a multiple-choice file (nothing trained again).
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("\n".join(json.dumps({"instruction": f"Pick {k}", "choices": ["a", "bb", "ccc"], "gold": k}) for k in range(3)))
    knowledge = compare(str(recipe), CONTENDERS, InstructionDataModule(test_files=[str(quiz)]), str(out), steps=3,
                        holdout=8, scoring="loglikelihood")  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")} == stamps
    assert knowledge["evaluation"]["scoring"] == "loglikelihood" and set(knowledge["evaluation"]["metrics"]) == {"acc", "acc_norm"}
    assert len((out / "eval" / "choices.jsonl").read_text().splitlines()) == 4 * 3


def test_compare_refuses_duplicate_names(recipe, tmp_path):
    twice = [CONTENDERS[1], CONTENDERS[1]]
    with pytest.raises(ValueError, match="must differ"):
        compare(str(recipe), twice, ArithmeticDataModule(num_test=2), str(tmp_path / "x"))
