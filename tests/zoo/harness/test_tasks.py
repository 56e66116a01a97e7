"""zoo/harness/tasks: ftzoo's offline lm-eval tasks over the LLM-Adapters test sets, loaded by
lm-eval's own TaskManager (no hub), in the cloze form of lm-eval's ARC/PIQA/WinoGrande tasks."""

import json
from pathlib import Path

import pytest
from harness_data import write_reasoning_data
from lm_eval.tasks import TaskManager
from locations import REASONING_DATA

from datamodules.choices import load_choice_items
from datamodules.errors import DataError
from zoo.harness import TASKS_DIR

SHARED = {"commonsense": ["arc_challenge", "arc_easy", "boolq", "openbookqa", "piqa"], "math": ["aqua"]}


def _load(task: str, data_dir) -> object:
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)})
    return manager.load([task])["tasks"][task]


def test_a_question_is_scored_in_lm_evals_cloze_form(tmp_path):
    task = _load("llm_adapters_arc_easy", write_reasoning_data(tmp_path))
    docs = list(task.test_docs())
    items = load_choice_items(tmp_path / "commonsense" / "test" / "arc_easy.json")
    assert len(docs) == len(items) == 10
    for doc, item in zip(docs, items):
        requests = task.construct_requests(doc, task.fewshot_context(doc, 0))
        pairs = [r.arguments for r in requests]
        assert pairs == item.requests("cloze")  # ftzoo's own scorer reads the same text
        assert pairs[0][0] == f"Question: {item.question}\nAnswer:" and pairs[0][1] == " " + item.choices[0]
        assert task.doc_to_target(doc) == item.gold
    assert set(task._metric_fn_list) == {"acc", "acc_norm"}


def test_a_blank_scores_the_rest_of_the_sentence_after_each_option(tmp_path):
    task = _load("llm_adapters_winogrande", write_reasoning_data(tmp_path))
    doc = next(iter(task.test_docs()))
    item = load_choice_items(tmp_path / "commonsense" / "test" / "winogrande.json")[0]
    pairs = [r.arguments for r in task.construct_requests(doc, task.fewshot_context(doc, 0))]
    assert pairs == item.requests("cloze")
    assert pairs[0][0].endswith(item.choices[0]) and pairs[0][1] == " grew all year."


@pytest.mark.parametrize("domain,name", [(d, n) for d, names in SHARED.items() for n in names])
def test_every_shared_multiple_choice_set_loads(domain, name):
    task = _load(f"llm_adapters_{name}", REASONING_DATA)
    raw = json.loads((REASONING_DATA / domain / "test" / f"{name}.json").read_text())
    docs = task.test_docs()
    assert len(docs) == len(raw)
    assert all(0 <= d["gold"] < len(d["choices"]) for d in docs)


def test_missing_data_is_named_with_how_to_pass_it(tmp_path):
    with pytest.raises(DataError, match=r"no LLM-Adapters data folder.*--data_dir"):
        _load("llm_adapters_arc_easy", tmp_path / "nowhere")
    write_reasoning_data(tmp_path)
    with pytest.raises(
        DataError, match=r"no test file for task 'commonsense/piqa' \(available: arc_easy, winogrande\)"
    ):
        _load("llm_adapters_piqa", tmp_path)


def test_our_task_names_are_not_lm_evals():
    """lm-eval's own arc_easy, piqa, ... stay reachable beside ours (the include path would override them)."""
    import lm_eval.tasks

    ours = {name for name in TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks}
    assert ours == {
        f"llm_adapters_{n}" for n in [*SHARED["commonsense"], "hellaswag", "social_i_qa", "winogrande", "aqua"]
    } | {"llm_adapters_commonsense"}
    theirs = Path(lm_eval.tasks.__file__).parent
    assert not [p for p in theirs.rglob("*.yaml") if "llm_adapters" in p.read_text(errors="replace")]
