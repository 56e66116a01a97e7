"""tools/study.py end to end on a tiny model: every seed scores the same items, the first seed's
learning rates are reused, a finished seed is read back, and the summary pools seeds item by item."""

import json

import pytest
from locations import REPO

from datamodules import InstructionDataModule
from tools.compare import Contender
from tools.study import Evaluation, curve, study

pytestmark = pytest.mark.slow


@pytest.fixture
def quiz(tmp_path):
    path = tmp_path / "quiz.jsonl"
    rows = [{"instruction": f"What is {k} + {k}?", "choices": [str(k), str(2 * k), str(3 * k)], "gold": 1} for k in range(1, 9)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return InstructionDataModule(test_files=[str(path)])


def test_study_over_seeds(recipe, quiz, tmp_path):
    contenders = [Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25}, lrs=[1e-3, 3e-3]),
                  Contender("lora-r2", "lora", {"r": 2, "alpha": 4}, lrs=[3e-3])]  # fmt: skip
    out = tmp_path / "study"
    also = [Evaluation("quiz-adapter-form", quiz, prompt_form="adapter")]
    results = study(str(recipe), contenders, quiz, str(out), seeds=[0, 1], steps=2, holdout=8, scoring="loglikelihood",
                    also_evaluate=also, title="tiny")  # fmt: skip

    first, second = (json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1))
    assert len(first["runs"]["s2ft"]) == 2 and len(second["runs"]["s2ft"]) == 1  # seed 1 trains the chosen rate only
    assert second["chosen"]["s2ft"]["lr"] == first["chosen"]["s2ft"]["lr"]
    assert second["evaluation"]["base_from"] == str(out / "seed-0" / "results.json")  # the base is scored once
    assert second["evaluation"]["outcomes"]["acc"]["base"] == first["evaluation"]["outcomes"]["acc"]["base"]
    assert json.loads((out / "seed-1" / "quiz-adapter-form" / "results.json").read_text())["base_from"]
    summary = results["summary"]
    assert summary["seeds"] == [0, 1] and summary["entries"] == ["base", "s2ft", "lora-r2"] and summary["metric"] == "acc"
    for entry in ("s2ft", "lora-r2"):
        values = summary["scores"][entry]["tasks"]["quiz"]["values"]
        assert values == [r["evaluation"]["scores"][entry]["tasks"]["quiz"]["accuracy"] for r in (first, second)]
    pair = next(p for p in summary["pairs"] if (p["first"], p["second"]) == ("s2ft", "lora-r2"))
    assert pair["pooled_items"] == 16
    assert "quiz-adapter-form" in results["also"]
    report = (out / "results.md").read_text()
    assert "mean ± standard deviation over seeds 0, 1" in report and "| s2ft | " in report

    # Run again: finished seeds are read back, nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = study(str(recipe), contenders, quiz, str(out), seeds=[0, 1], steps=2, holdout=8, scoring="loglikelihood",
                  also_evaluate=also, title="tiny")  # fmt: skip
    assert again["summary"] == summary
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "results.json" or p.parent != out} == {
        p: t for p, t in stamps.items() if p.name != "results.json" or p.parent != out
    }


def test_a_seed_runs_and_resumes_by_method(recipe, quiz, tmp_path):
    """Each method of a seed is trained and scored in its own folder (read back once written); the
    seed's results put them together. A seed interrupted after its first method loses only the
    method it was on."""
    contenders = [Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25}, lrs=[3e-3]),
                  Contender("lora-r2", "lora", {"r": 2, "alpha": 4}, lrs=[3e-3])]  # fmt: skip
    also = [Evaluation("adapter-form", quiz, prompt_form="adapter", batch_size=3)]
    out = tmp_path / "study"
    kwargs = {"seeds": [0], "steps": 1, "holdout": 8, "scoring": "loglikelihood", "also_evaluate": also}
    study(str(recipe), contenders, quiz, str(out), **kwargs)
    seed = out / "seed-0"
    parts = {name: json.loads((seed / name / "results.json").read_text()) for name in ("s2ft", "lora-r2")}
    assert parts["s2ft"]["evaluation"]["entries"] == ["base", "s2ft"] and parts["s2ft"]["evaluation"]["base_from"] is None
    assert parts["lora-r2"]["evaluation"]["base_from"] == str(seed / "s2ft" / "results.json")  # the base scored once
    whole = json.loads((seed / "results.json").read_text())
    assert whole["evaluation"]["entries"] == ["base", "s2ft", "lora-r2"] and set(whole["chosen"]) == {"s2ft", "lora-r2"}
    for name in ("s2ft", "lora-r2"):
        assert whole["evaluation"]["outcomes"]["acc"][name] == parts[name]["evaluation"]["outcomes"]["acc"][name]
    merged = json.loads((seed / "adapter-form" / "results.json").read_text())
    assert merged["entries"] == ["base", "s2ft", "lora-r2"] and merged["prompt_form"] == "adapter"

    # Interrupted while on LoRA: S²FT's files are read back as they are, LoRA is trained and scored again.
    import shutil

    for gone in ("results.json", "adapter-form", "lora-r2"):
        shutil.rmtree(seed / gone) if (seed / gone).is_dir() else (seed / gone).unlink()
    kept = {p: p.stat().st_mtime_ns for p in (seed / "s2ft").rglob("*.json")}
    study(str(recipe), contenders, quiz, str(out), **kwargs)
    assert {p: p.stat().st_mtime_ns for p in (seed / "s2ft").rglob("*.json")} == kept
    assert json.loads((seed / "results.json").read_text())["evaluation"]["entries"] == ["base", "s2ft", "lora-r2"]
    assert (seed / "adapter-form" / "results.json").is_file()


def test_first_seed_reuses_an_earlier_base(recipe, quiz, tmp_path):
    """``base_from``: the first seed takes the base model's outcomes from an earlier comparison on
    the same items (main and further evaluations), and scores the base itself where none matches."""
    s2ft = [Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25}, lrs=[3e-3])]
    also = [Evaluation("quiz-adapter-form", quiz, prompt_form="adapter")]
    earlier = tmp_path / "curve" / "steps-1"
    curve(str(recipe), s2ft, quiz, str(tmp_path / "curve"), budgets=[1], holdout=8, scoring="loglikelihood",
          also_evaluate=also)  # fmt: skip
    study(str(recipe), s2ft, quiz, str(tmp_path / "study"), seeds=[0], steps=1, holdout=8, scoring="loglikelihood",
          also_evaluate=also, base_from=str(earlier))  # fmt: skip
    seed = tmp_path / "study" / "seed-0"
    main = json.loads((seed / "results.json").read_text())["evaluation"]
    assert main["base_from"] == str(earlier / "results.json")
    assert main["outcomes"]["acc"]["base"] == json.loads((earlier / "results.json").read_text())["evaluation"]["outcomes"]["acc"]["base"]
    assert json.loads((seed / "quiz-adapter-form" / "results.json").read_text())["base_from"] == str(
        earlier / "quiz-adapter-form" / "results.json")

    # A further evaluation's own base_from, where the study has none.
    named = [Evaluation("again", quiz, prompt_form="adapter", base_from=str(earlier / "quiz-adapter-form" / "results.json"))]
    study(str(recipe), s2ft, quiz, str(tmp_path / "named"), seeds=[0], steps=1, holdout=8, scoring="loglikelihood",
          also_evaluate=named)  # fmt: skip
    assert json.loads((tmp_path / "named" / "seed-0" / "s2ft" / "again" / "results.json").read_text())["base_from"] == str(
        earlier / "quiz-adapter-form" / "results.json")

    # Other settings (the adapter form where the earlier main evaluation was cloze): the base is scored again.
    other = study(str(recipe), s2ft, quiz, str(tmp_path / "other"), seeds=[0], steps=1, holdout=8,
                  scoring="loglikelihood", prompt_form="adapter", base_from=str(earlier))  # fmt: skip
    assert json.loads((tmp_path / "other" / "seed-0" / "results.json").read_text())["evaluation"]["base_from"] is None
    assert other["summary"]["entries"][0] == "base"


def test_curve_over_budgets(recipe, quiz, tmp_path):
    out = tmp_path / "curve"
    points = curve(str(recipe), [Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25}, lrs=[3e-3])], quiz,
                   str(out), budgets=[1, 3], holdout=8, scoring="loglikelihood")["points"]  # fmt: skip
    assert [p["steps"] for p in points["s2ft"]] == [1, 3]
    assert (out / "curve.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="give at least one budget"):
        curve(str(recipe), [], quiz, str(out), budgets=[])


def test_curve_with_a_further_evaluation(recipe, quiz, tmp_path):
    """Each budget's adapters are scored once more; the base model once per evaluation; a budget
    whose adapters are gone (trained in another checkout) is left out of that curve and said so."""
    import shutil

    out = tmp_path / "curve"
    s2ft = [Contender("s2ft", "s2ft", {"o_heads": 0.5, "down_channels": 0.25}, lrs=[3e-3])]
    also = [Evaluation("adapter-form", quiz, prompt_form="adapter")]
    summary = curve(str(recipe), s2ft, quiz, str(out), budgets=[1, 3], holdout=8, scoring="loglikelihood",
                    also_evaluate=also)  # fmt: skip
    further = summary["also"]["adapter-form"]
    assert [p["steps"] for p in further["points"]["s2ft"]] == [1, 3] and further["missing"] == []
    later = json.loads((out / "steps-3" / "adapter-form" / "results.json").read_text())
    assert later["base_from"] == str(out / "steps-1" / "adapter-form" / "results.json")
    assert later["prompt_form"] == "adapter"
    assert (out / "curve-adapter-form.png").stat().st_size > 1000
    assert json.loads((out / "curve.json").read_text())["also"]["adapter-form"]["points"] == further["points"]

    # Budget 1's adapters and its further evaluation gone: budget 3 is still scored, budget 1 is reported missing.
    shutil.rmtree(out / "steps-1" / "runs")
    shutil.rmtree(out / "steps-1" / "adapter-form")
    again = curve(str(recipe), s2ft, quiz, str(out), budgets=[1, 3], holdout=8, scoring="loglikelihood",
                  also_evaluate=also)["also"]["adapter-form"]  # fmt: skip
    assert again["missing"] == [1] and [p["steps"] for p in again["points"]["s2ft"]] == [3]


@pytest.mark.parametrize("config", ["commonsense_curve", "commonsense", "math"])
def test_study_configs_parse_as_written(config):
    """The committed study configs are complete: jsonargparse builds every argument from them."""
    from jsonargparse import ArgumentParser

    from tools.study import curve as curve_fn
    from tools.study import study as study_fn

    parser = ArgumentParser()
    parser.add_function_arguments(curve_fn if config.endswith("curve") else study_fn)
    parser.add_argument("--config", action="config")
    parsed = parser.parse_args(["--config", str(REPO / "configs" / "studies" / f"{config}.yaml")])
    init = parser.instantiate_classes(parsed)
    assert init.contenders and type(init.eval_data).__name__ == "ReasoningDataModule"
