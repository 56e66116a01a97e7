"""tools/harness.py and zoo/harness/model.py: the lm-eval bridge on a tiny model agrees with
lm-eval's own ``hf`` model on each adapter exported as a plain Hugging Face folder, item by
item (choices, accuracy, log-likelihoods); switching adapters back and forth changes nothing;
``loglikelihood_rolling`` and ``generate_until`` agree too; the model is registered as ``ftzoo``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness_data import write_reasoning_data
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.evaluator import evaluate
from lm_eval.models.huggingface import HFLM

from tools.export import export
from tools.harness import harness, task_manager
from zoo.harness.model import FtzooLM

pytestmark = pytest.mark.slow  # about 40 s on 2 quiet cores (two adapters trained, exported, evaluated 14 times)

TASKS = ["llm_adapters_arc_easy", "llm_adapters_winogrande"]
METHODS = ("s2ft", "lora")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir):
    """Data, two adapters of different methods, and each exported as a plain folder."""
    from tiny_adapters import train_adapter

    from zoo.adapter import BaseModelInfo, save_adapter
    from zoo.loading import load_model

    root = tmp_path_factory.mktemp("harness")
    model = load_model(str(tiny_llama_dir))
    info = BaseModelInfo.of(model, str(tiny_llama_dir))
    adapters, exported = {}, {}
    for method in METHODS:
        adapters[method] = save_adapter(train_adapter(method, model, info, steps=4), root / method)
        exported[method] = export(str(adapters[method]), str(root / f"{method}-hf"))
    return {"data": write_reasoning_data(root / "data"), "base": tiny_llama_dir, "adapters": adapters,
            "exported": exported, "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def bridge_run(setup):
    out = setup["root"] / "out"
    results = harness(
        tasks=TASKS, adapters=[f"{m}={p}" for m, p in setup["adapters"].items()], base_model=str(setup["base"]),
        data_dir=str(setup["data"]), batch_size=4, device="cpu", output=str(out),
    )  # fmt: skip
    return results, out


def _per_item(results: dict) -> dict[str, dict[int, tuple]]:
    """task → doc → (acc, acc_norm, log-likelihood of each choice)."""
    return {
        task: {s["doc_id"]: (s["acc"], s["acc_norm"], [float(r[0]) for r in s["filtered_resps"]]) for s in rows}
        for task, rows in results["samples"].items()
    }


def _logged(folder: Path) -> dict[str, dict[int, tuple]]:
    """The same, read back from lm-eval's per-sample files of one entry."""
    logged = {}
    for path in folder.glob("samples_*.jsonl"):  # samples_<task>_<date>.jsonl
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        logged[path.stem.removeprefix("samples_").rsplit("_", 1)[0]] = {
            r["doc_id"]: (r["acc"], r["acc_norm"], [float(x[0]) for x in r["filtered_resps"]]) for r in rows
        }
    return logged


def _evaluate(lm, setup) -> dict[str, dict[int, tuple]]:
    """lm-eval's ``evaluate`` (``simple_evaluate`` less its environment report, which runs pip)."""
    return _per_item(evaluate(lm=lm, task_dict=task_manager(TASKS, str(setup["data"])).load(TASKS), log_samples=True))


def _hf(setup, folder: Path) -> dict[str, dict[int, tuple]]:
    return _evaluate(HFLM(pretrained=str(folder), device="cpu", batch_size=4, dtype="float32"), setup)


def _assert_same(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys()
    for task, docs in mine.items():
        assert docs.keys() == theirs[task].keys()
        for doc, (acc, norm, lls) in docs.items():
            assert (acc, norm) == theirs[task][doc][:2], (task, doc)
            torch.testing.assert_close(lls, theirs[task][doc][2], rtol=0, atol=1e-4)


def test_the_bridge_agrees_with_lm_evals_hf_model_on_exported_adapters(setup, bridge_run):
    results, out = bridge_run
    assert results["entries"] == ["base", "s2ft", "lora"] and results["metric"] == "acc"
    assert results["items"] == {"llm_adapters_arc_easy": 10, "llm_adapters_winogrande": 10}
    logged = {entry: _logged(out / "lm_eval" / entry) for entry in results["entries"]}
    for entry in results["entries"]:  # lm-eval's own files, one folder per entry
        (aggregate,) = (out / "lm_eval" / entry).glob("results_*.json")
        assert json.loads(aggregate.read_text())["results"] == results["lm_eval"][entry]
    hf = {"base": _hf(setup, setup["base"]), **{m: _hf(setup, setup["exported"][m]) for m in METHODS}}
    for entry, theirs in hf.items():
        _assert_same(logged[entry], theirs)
    for method in METHODS:  # each adapter moved the log-likelihoods, so agreeing means it was switched in
        lls = [ll for task in hf[method].values() for _, _, ll in task.values()]
        base = [ll for task in hf["base"].values() for _, _, ll in task.values()]
        assert max(abs(a - b) for x, y in zip(lls, base) for a, b in zip(x, y)) > 1e-3

    # ftzoo's paired table counts what lm-eval logged and aggregated
    for metric, report in [("acc", results), ("acc_norm", results["other_metrics"]["acc_norm"])]:
        for entry in results["entries"]:
            for task in TASKS:
                score = report["scores"][entry]["tasks"][task]
                assert score["correct"] == sum(v[0 if metric == "acc" else 1] for v in hf[entry][task].values())
                assert score["accuracy"] == pytest.approx(results["lm_eval"][entry][task][f"{metric},none"])
    assert len(results["mcnemar"]) == 3
    saved = json.loads((out / "results.json").read_text())
    assert saved["scores"] == results["scores"] and "acc_norm" in saved["other_metrics"]
    markdown = (out / "results.md").read_text()
    assert "### lm-evaluation-harness (acc)" in markdown and "### lm-evaluation-harness (acc_norm)" in markdown


def test_switching_back_and_forth_changes_nothing(setup):
    lm = FtzooLM(adapters={m: str(p) for m, p in setup["adapters"].items()}, base_model=str(setup["base"]),
                 device="cpu", batch_size=4)  # fmt: skip
    runs = []
    for entry in ["base", "s2ft", "lora", "base", "lora", "s2ft"]:
        lm.activate(entry)
        assert lm.active == entry and lm.get_model_info()["adapter"] == entry
        runs.append(_evaluate(lm, setup))
    for first, again in [(0, 3), (1, 5), (2, 4)]:
        _assert_same(runs[first], runs[again])


def test_rolling_loglikelihood_and_generation_agree_with_hf(setup):
    lm = FtzooLM(adapter=f"lora={setup['adapters']['lora']}", base_model=str(setup["base"]), device="cpu", batch_size=2)
    hf = HFLM(pretrained=str(setup["exported"]["lora"]), device="cpu", batch_size=2, dtype="float32")
    texts = ["The river ran past the stone garden.", "What is 3 plus 4? Answer: 7", "winter " * 30]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    generate = [Instance("generate_until", {}, (t, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}), i)
                for i, t in enumerate(texts)]  # fmt: skip
    torch.testing.assert_close(lm.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling), rtol=0, atol=1e-4)
    assert lm.generate_until(generate) == hf.generate_until(generate)
    lm.activate("base")
    assert lm.loglikelihood_rolling(rolling) != hf.loglikelihood_rolling(rolling)


def test_registered_as_ftzoo_in_lm_evals_registry(setup, bridge_run):
    args = f"adapter={setup['adapters']['s2ft']},base_model={setup['base']},device=cpu"
    manager = task_manager(TASKS, str(setup["data"]))
    results = simple_evaluate(model="ftzoo", model_args=args, tasks=TASKS, task_manager=manager, batch_size=4)
    assert results["config"]["adapter_method"] == "s2ft"
    assert results["results"] == bridge_run[0]["lm_eval"]["s2ft"]


def test_bad_input_is_refused_before_the_model_loads(setup, tmp_path, monkeypatch):
    from datamodules.errors import DataError
    from zoo.harness import model as harness_model
    from zoo.outputs import OutputPathError

    monkeypatch.setattr(harness_model, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is a file"):
        harness(tasks=TASKS, base_model=str(setup["base"]), output=str(tmp_path / "file" / "out"))
    with pytest.raises(ValueError, match="at least one task"):
        harness(tasks=[], base_model=str(setup["base"]))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        harness(tasks=TASKS, base_model=str(setup["base"]), include_base=False)
    with pytest.raises(DataError, match="no LLM-Adapters data folder"):
        harness(tasks=TASKS, base_model=str(setup["base"]), data_dir=str(tmp_path / "nowhere"))


def test_ftzoos_own_scorer_chooses_as_lm_eval_does(setup, bridge_run):
    """tools.evaluate --scoring loglikelihood (zoo.loglikelihood, cloze form) on the same records:
    the same choice per item, so the same acc and acc_norm, as lm-eval through the bridge."""
    from datamodules import ReasoningDataModule
    from tools.evaluate import evaluate as ftzoo_evaluate

    results, out = bridge_run
    logged = {entry: _logged(out / "lm_eval" / entry) for entry in results["entries"]}
    data = ReasoningDataModule(data_dir=str(setup["data"]), test_tasks=["commonsense/arc_easy", "commonsense/winogrande"])
    mine = ftzoo_evaluate(data, adapters=[f"{m}={p}" for m, p in setup["adapters"].items()], base_model=str(setup["base"]),
                          scoring="loglikelihood", prompt_form="cloze", batch_size=4, device="cpu")  # fmt: skip
    assert mine["entries"] == results["entries"]
    for entry in mine["entries"]:
        for metric, k in (("acc", 0), ("acc_norm", 1)):
            theirs = [logged[entry][f"llm_adapters_{task}"][doc][k] for task in ("arc_easy", "winogrande") for doc in range(10)]
            assert [float(x) for x in mine["outcomes"][metric][entry]] == theirs, (entry, metric)
