"""tools/evaluate.py: intervals, paired tests and aggregation on fixed generations; the whole
run on a tiny model (base once, adapters switched in place, the same items for every entry)."""

import json
import math

import pytest
import torch
from tiny_adapters import train_adapter
from tiny_models import tiny_tokenizer

from datamodules import ArithmeticDataModule
from datamodules.encode import Example
from tools.evaluate import evaluate
from zoo.adapter import BaseModelInfo, save_adapter
from zoo.evaluation import (
    Score,
    macro_average,
    mcnemar,
    mean_and_sd,
    minimum_detectable_difference,
    sample_items,
    wilson_interval,
)
from zoo.loading import load_model
from zoo.report import markdown_report, plot_results, score_entries


@pytest.mark.parametrize(
    "correct, total, low, high",
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 100, 0.7222, 0.8749)],
)
def test_wilson_interval_matches_published_values(correct, total, low, high):
    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_mcnemar_exact_p_value():
    first = [True] * 10 + [False] * 2 + [True] * 30 + [False] * 5  # 10 only-first, 2 only-second
    second = [False] * 10 + [True] * 2 + [True] * 30 + [False] * 5
    test = mcnemar(first, second)
    assert (test.only_first, test.only_second) == (10, 2)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert test.verdict == "first"
    assert mcnemar(second, first).verdict == "second"


def test_mcnemar_small_differences_are_ties():
    assert mcnemar([True, True, False], [False, False, True]).verdict == "tie"  # 2 vs 1: p = 1
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar([True], [True, False])


def test_macro_average_is_the_unweighted_mean_with_an_interval():
    avg = macro_average([Score(9, 10), Score(10, 100)])
    assert avg["accuracy"] == pytest.approx(0.5)
    half = 1.959963984540054 * math.sqrt((0.9 * 0.1 / 10 + 0.1 * 0.9 / 100) / 4)
    assert (avg["low"], avg["high"]) == pytest.approx((0.5 - half, 0.5 + half))


def _items(tasks):
    return [Example([1, 2], [3], "p", "1", task) for task in tasks]


def test_score_entries_aggregates_per_task_and_pairs():
    items = _items(["a", "a", "a", "a", "b", "b"])
    correct = {
        "base": [False, False, True, False, True, False],
        "tuned": [True, True, True, False, True, True],
    }
    out = score_entries(items, correct, ["a", "b"])
    assert out["scores"]["tuned"]["tasks"]["a"]["correct"] == 3 and out["scores"]["tuned"]["tasks"]["a"]["total"] == 4
    assert out["scores"]["base"]["tasks"]["b"]["accuracy"] == 0.5
    assert out["scores"]["tuned"]["average"]["accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert out["scores"]["base"]["pooled"]["correct"] == 2
    (pair,) = out["mcnemar"]
    assert (pair["first"], pair["second"], pair["only_first"], pair["only_second"]) == ("base", "tuned", 0, 3)
    assert pair["tasks"]["a"]["only_second"] == 2 and pair["tasks"]["b"]["only_second"] == 1
    report = markdown_report({"title": "t", "entries": ["base", "tuned"], "tasks": ["a", "b"],
                              "items": {"a": 4, "b": 2}, **out})  # fmt: skip
    assert "| tuned | 75.0 [" in report and "| base | tuned | 0 | 3 |" in report


def test_sample_items_is_seeded_per_task_and_keeps_file_order():
    items = [Example([i], [], str(i), str(i), "a" if i % 3 else "b") for i in range(30)]
    first = sample_items(items, 5, seed=1)
    assert first == sample_items(items, 5, seed=1)
    assert sample_items(items, 5, seed=2) != first
    assert sum(e.task == "a" for e in first) == 5 and sum(e.task == "b" for e in first) == 5
    assert [int(e.prompt) for e in first] == sorted(int(e.prompt) for e in first)
    assert sample_items(items, None, seed=1) == items


@pytest.fixture
def two_adapters(tiny_llama_dir, tmp_path):
    model = load_model(str(tiny_llama_dir))
    base = BaseModelInfo.of(model, str(tiny_llama_dir))
    folders = {}
    for method in ("s2ft", "lora"):
        folders[method] = save_adapter(train_adapter(method, model, base, steps=3), tmp_path / method)
    return folders


def _arithmetic(**kw):
    return ArithmeticDataModule(num_train=0, num_val=0, num_test=12, prompt_style="chat", max_new_tokens=6, **kw)


def test_evaluate_base_and_adapters_on_the_same_items(tiny_llama_dir, two_adapters, tmp_path):
    out = tmp_path / "eval"
    results = evaluate(
        _arithmetic(), adapters=[f"{m}={p}" for m, p in two_adapters.items()], base_model=str(tiny_llama_dir),
        max_records=8, batch_size=3, output=str(out),
    )  # fmt: skip
    assert results["entries"] == ["base", "s2ft", "lora"]
    assert results["items"] == {"arithmetic": 8}
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 8
    for entry in results["entries"]:  # every entry answered the same items, and the counts add up
        mine = [r for r in rows if r["entry"] == entry]
        assert [r["item"] for r in mine] == list(range(8))
        assert sum(r["correct"] for r in mine) == results["scores"][entry]["pooled"]["correct"]
    generations = {e: [r["generation"] for r in rows if r["entry"] == e] for e in results["entries"]}
    assert generations["s2ft"] != generations["base"] or generations["lora"] != generations["base"]
    assert len(results["mcnemar"]) == 3
    assert json.loads((out / "results.json").read_text())["entries"] == results["entries"]
    assert "### Evaluation" in (out / "results.md").read_text()
    assert plot_results(results, out / "accuracy.png").stat().st_size > 1000

    # The base entry after the adapters were switched in and out equals a base-only run.
    alone = evaluate(_arithmetic(), base_model=str(tiny_llama_dir), max_records=8, batch_size=8)
    assert alone["scores"]["base"] == results["scores"]["base"]


def test_evaluate_batching_does_not_change_answers(tiny_llama_dir, two_adapters, tmp_path):
    runs = [
        evaluate(_arithmetic(), adapters=[str(two_adapters["s2ft"])], include_base=False, batch_size=b,
                 output=str(tmp_path / f"b{b}"))  # fmt: skip
        for b in (1, 5)
    ]
    texts = [(tmp_path / f"b{b}" / "generations.jsonl").read_text() for b in (1, 5)]
    assert texts[0] == texts[1]
    assert runs[0]["scores"] == runs[1]["scores"]


def test_evaluate_refuses_an_adapter_named_base(tiny_llama_dir, two_adapters):
    with pytest.raises(ValueError, match="base"):
        evaluate(_arithmetic(), adapters=[f"base={two_adapters['lora']}"])


# ----- log-likelihood scoring ---------------------------------------------------------------------


def _choice_files(folder):
    """A file with ``choices`` + ``gold`` and one in the LLM-Adapters layout (choices in the text)."""
    rows = [
        {"instruction": "Which is red?", "choices": ["a rose", "the sky", "grass"], "gold": 0},
        {"instruction": "Is ice cold?", "input": "Think of winter.", "choices": ["yes", "no"], "gold": 0},
        {"instruction": "Pick a number", "choices": ["one", "two", "three", "four", "five"], "gold": 3},
    ]
    quiz = folder / "quiz.jsonl"
    quiz.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    arc = folder / "arc.json"
    arc.write_text(json.dumps([
        {"instruction": "Please choose the correct answer to the question: What falls? Answer1: rain Answer2: smoke "
                        "Answer3: steam\n\nAnswer format: answer1/answer2/answer3", "output": "", "answer": "answer1"},
        {"instruction": "Please choose the correct answer to the question: What is hot? Answer1: ice Answer2: fire"
                        "\n\nAnswer format: answer1/answer2", "output": "", "answer": "answer2"},
    ]))  # fmt: skip
    return [str(quiz), str(arc)]


def _naive(model, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return float(sum(logprobs[len(context) - 1 + j, t] for j, t in enumerate(continuation)))


@pytest.mark.parametrize("form", ["cloze", "adapter"])
def test_evaluate_by_loglikelihood_scores_every_choice_of_the_same_items(tiny_llama_dir, two_adapters, tmp_path, form):
    from datamodules import InstructionDataModule
    from zoo.loglikelihood import encode_pair

    data = InstructionDataModule(test_files=_choice_files(tmp_path), prompt_style="alpaca")
    out = tmp_path / f"eval-{form}"
    results = evaluate(
        data, adapters=[f"{m}={p}" for m, p in two_adapters.items()], base_model=str(tiny_llama_dir),
        scoring="loglikelihood", prompt_form=form, batch_size=3, output=str(out),
    )  # fmt: skip
    assert results["entries"] == ["base", "s2ft", "lora"] and results["items"] == {"quiz": 3, "arc": 2}
    assert set(results["metrics"]) == {"acc", "acc_norm"} and results["scores"] == results["metrics"]["acc"]["scores"]
    assert len(results["metrics"]["acc_norm"]["mcnemar"]) == 3
    rows = [json.loads(line) for line in (out / "choices.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 and [len(r["logprobs"]) for r in rows[:5]] == [3, 2, 5, 3, 2]
    for entry in results["entries"]:
        mine = [r for r in rows if r["entry"] == entry]
        for metric in ("acc", "acc_norm"):
            assert sum(r[metric] for r in mine) == results["metrics"][metric]["scores"][entry]["pooled"]["correct"]
    logprobs = {e: [r["logprobs"] for r in rows if r["entry"] == e] for e in results["entries"]}
    assert logprobs["s2ft"] != logprobs["base"] and logprobs["lora"] != logprobs["base"]
    report = (out / "results.md").read_text()
    assert "`acc`: accuracy" in report and "`acc_norm`: accuracy" in report and "| seconds |" in report

    # the base entry (after adapters were switched in and out) is the base model's own log-likelihood
    model, tokenizer = load_model(str(tiny_llama_dir)), tiny_tokenizer()
    items = data.choice_items("test")
    for item, scored in zip(items, logprobs["base"]):
        if form == "cloze":
            pairs = [encode_pair(tokenizer, c, x) for c, x in item.requests("cloze")]
        else:  # as the adapter was trained: the record in the alpaca template, then the answer sentence
            instruction, extra = item.template_fields()
            prompt = data.prompt_template().render(instruction, extra)
            assert ("### Input:\nThink of winter." in prompt) == (extra != "")
            pairs = [(tokenizer.encode(prompt), tokenizer.encode(x, add_special_tokens=False)) for _, x in item.requests("adapter")]
        assert scored == pytest.approx([_naive(model, *pair) for pair in pairs], abs=1e-4)


def test_evaluate_by_loglikelihood_subsamples_the_same_items_for_every_entry(tiny_llama_dir, two_adapters, tmp_path):
    from datamodules import InstructionDataModule

    data = InstructionDataModule(test_files=_choice_files(tmp_path))
    results = evaluate(data, adapters=[str(two_adapters["lora"])], base_model=str(tiny_llama_dir),
                       scoring="loglikelihood", max_records=2, seed=3, output=str(tmp_path / "out"))  # fmt: skip
    assert results["items"] == {"quiz": 2, "arc": 2}
    rows = [json.loads(line) for line in (tmp_path / "out" / "choices.jsonl").read_text().splitlines()]
    sources = {e: [r["source"] for r in rows if r["entry"] == e] for e in results["entries"]}
    assert sources["base"] == sources["lora"] and len(sources["base"]) == 4


@pytest.mark.parametrize("scoring", ["loglikelihood", "generation"])
def test_base_outcomes_are_reused_only_for_the_same_items_and_settings(tiny_llama_dir, two_adapters, tmp_path,
                                                                       monkeypatch, capsys, scoring):  # fmt: skip
    """A study scores its base once: ``base_from`` takes the base's outcomes from an earlier results.json
    when the items and settings match (the base_key), and scores the base again when they do not."""
    from datamodules import InstructionDataModule
    from tools import evaluate as tool

    data = (lambda **kw: InstructionDataModule(test_files=_choice_files(tmp_path), **kw)) if scoring == "loglikelihood" \
        else _arithmetic  # fmt: skip
    adapters = [f"lora={two_adapters['lora']}"]
    first = evaluate(data(), adapters=adapters, base_model=str(tiny_llama_dir), scoring=scoring, output=str(tmp_path / "a"))
    calls = []
    scorer = "score_items" if scoring == "loglikelihood" else "greedy_answers"
    real = getattr(tool, scorer)
    monkeypatch.setattr(tool, scorer, lambda *a, **kw: calls.append(kw["description"]) or real(*a, **kw))

    again = evaluate(data(), adapters=adapters, base_model=str(tiny_llama_dir), scoring=scoring,
                     base_from=str(tmp_path / "a" / "results.json"))  # fmt: skip
    assert calls == ["lora"] and again["base_from"] == str(tmp_path / "a" / "results.json")
    assert again["outcomes"] == first["outcomes"] and again["scores"] == first["scores"]
    assert again["entries"] == first["entries"] == ["base", "lora"]
    assert "outcomes reused" in capsys.readouterr().err

    calls.clear()  # other items: the base is scored again, and the reason said
    other = evaluate(data(), adapters=adapters, base_model=str(tiny_llama_dir), scoring=scoring, max_records=1,
                     base_from=str(tmp_path / "a" / "results.json"))  # fmt: skip
    assert calls == ["base", "lora"] and other["base_from"] is None
    assert "scored other items" in capsys.readouterr().err


def test_evaluate_by_loglikelihood_refuses_a_task_that_is_not_multiple_choice(tiny_llama_dir):
    from datamodules.errors import DataError

    with pytest.raises(DataError, match="ArithmeticDataModule has a task that is not multiple choice.*task arithmetic"):
        evaluate(_arithmetic(), base_model=str(tiny_llama_dir), scoring="loglikelihood")


def test_minimum_detectable_difference_solves_connors_sample_size():
    # Connor (1987): psi = 0.2 discordant, delta = 0.1 needs (1.96*sqrt(.2) + 0.8416*sqrt(.19))^2 / .01 = 155 items
    needed = (1.959963984540054 * math.sqrt(0.2) + 0.8416212335729143 * math.sqrt(0.19)) ** 2 / 0.01
    assert minimum_detectable_difference(round(needed), 0.2) == pytest.approx(0.1, abs=2e-4)
    # more items detect less; a difference never exceeds the discordant fraction
    assert minimum_detectable_difference(10 * round(needed), 0.2) < 0.04
    assert minimum_detectable_difference(5, 0.2) == 0.2
    with pytest.raises(ValueError, match="need items > 0"):
        minimum_detectable_difference(0, 0.2)


def test_mean_and_sd_over_seeds():
    assert mean_and_sd([0.9, 0.895, 0.86]) == pytest.approx((0.885, 0.02179), abs=1e-5)
    mean, sd = mean_and_sd([0.5])
    assert mean == 0.5 and math.isnan(sd)
