"""tools/quickstart.py end to end on a tiny model: base test, fit, tuned test from one recipe, and the
same steps with another method through ``overrides`` (how the README's LoRA and full FT rows are made)."""

import json
from pathlib import Path

import pytest

from tools.quickstart import quickstart


def tiny_budget(model_dir) -> list[str]:
    return [
        "--model.model", str(model_dir), "--trainer.max_steps", "2", "--model.warmup_steps", "1",
        "--data.init_args.num_train", "16", "--data.init_args.num_test", "6", "--data.init_args.batch_size", "4",
        "--data.init_args.eval_batch_size", "6", "--data.init_args.max_new_tokens", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


@pytest.mark.parametrize(("method_args", "method"), [([], "S2FT"), (["--config", "configs/methods/lora.yaml"], "LoRA")])
def test_quickstart_measures_base_and_fine_tuned(tiny_llama_dir, tmp_path, monkeypatch, method_args, method):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the recipe paths are relative
    run = tmp_path / "run"
    results = quickstart(run_dir=str(run), overrides=[*method_args, *tiny_budget(tiny_llama_dir)])

    assert results["method"] == method
    assert results["steps"] == 2
    assert 0 < results["trainable_parameters"] <= results["base_parameters"]
    for accuracy in (results["base"]["acc"], results["fine_tuned"]["acc"]):
        assert 0.0 <= accuracy <= 1.0
    assert (run / "adapter").is_dir()
    assert json.loads((run / "results.json").read_text()) == results


def test_quickstart_scores_real_word_problems_when_given_the_data(tiny_llama_dir, tmp_path, monkeypatch):
    """``--word_problems <data_dir>``: base and adapter on AddSub, SingleEq and MultiArith, paired."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    data = tmp_path / "reasoning" / "math" / "test"
    data.mkdir(parents=True)
    for task in ("addsub", "singleeq", "multiarith"):
        rows = [{"instruction": f"Sam has {k} apples and gets {k} more. How many apples?", "input": "",
                 "output": f"{k} + {k} = {2 * k}. The answer is {2 * k}.", "answer": str(2 * k)} for k in (1, 2)]  # fmt: skip
        (data / f"{task}.json").write_text(json.dumps(rows))
    run = tmp_path / "run"
    results = quickstart(
        run_dir=str(run), overrides=tiny_budget(tiny_llama_dir), word_problems=str(tmp_path / "reasoning")
    )

    real = results["word_problems"]
    assert real["items"] == {"addsub": 2, "singleeq": 2, "multiarith": 2}
    assert real["base"]["total"] == real["fine_tuned"]["total"] == 6
    assert real["mcnemar"][0]["first"] == "base" and real["mcnemar"][0]["second"] == "fine_tuned"
    assert (run / "word_problems" / "results.md").is_file()


def test_quickstart_refuses_a_run_folder_with_an_adapter_before_any_work(tmp_path, monkeypatch):
    """An earlier run's adapter is refused before the base model is scored (minutes), not by ``fit`` after it."""
    import tools.quickstart
    from zoo.outputs import OutputPathError

    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter.json").write_text("{}")
    monkeypatch.setattr(tools.quickstart, "_test_accuracy", lambda *a: pytest.fail("the base model was scored"))
    with pytest.raises(OutputPathError, match="already exists; pass --model.overwrite true"):
        quickstart(run_dir=str(tmp_path / "run"))
