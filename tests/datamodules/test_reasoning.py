"""ReasoningDataModule on the real LLM-Adapters data (skipped when the shared data is absent)."""

from __future__ import annotations

import logging

import pytest

from datamodules import DataError, ReasoningDataModule
from datamodules.records import load_records
from datamodules.reasoning import resolve_tasks

COMMONSENSE_TRAIN = ["arc_challenge", "arc_easy", "boolq", "openbookqa"]
MATH_TEST = ["addsub", "aqua", "gsm8k", "multiarith", "singleeq"]


def test_task_specs_resolve_to_files(reasoning_data_dir):
    assert [t.task for t in resolve_tasks(reasoning_data_dir, ["commonsense"], "train")] == COMMONSENSE_TRAIN
    assert [t.task for t in resolve_tasks(reasoning_data_dir, ["math", "math/gsm8k"], "test")] == MATH_TEST
    (piqa,) = resolve_tasks(reasoning_data_dir, ["commonsense/piqa"], "test")
    assert piqa.domain == "commonsense" and piqa.path.name == "piqa.json"
    (by_path,) = resolve_tasks(reasoning_data_dir, [str(piqa.path)], "test")
    assert (by_path.task, by_path.domain) == ("piqa", "commonsense")


def test_missing_tasks_and_domains_are_clear_errors(reasoning_data_dir):
    with pytest.raises(DataError, match=r"no train file for task 'commonsense/piqa' \(available: arc_challenge, arc_easy, boolq, openbookqa\)"):
        resolve_tasks(reasoning_data_dir, ["commonsense/piqa"], "train")
    with pytest.raises(DataError, match="no such folder for task 'physics/x'"):
        resolve_tasks(reasoning_data_dir, ["physics/x"], "train")
    with pytest.raises(DataError, match="data_dir not found"):
        ReasoningDataModule(data_dir=str(reasoning_data_dir / "nope"), train_tasks=["commonsense"])


def test_eval_tasks_and_generation_length_are_known_at_construction(reasoning_data_dir):
    common = ReasoningDataModule(str(reasoning_data_dir), ["commonsense/boolq"], val_tasks=["commonsense/boolq", "commonsense/piqa"])
    assert common.eval_tasks("validate") == common.eval_tasks("test") == ["boolq", "piqa"]
    assert common.max_new_tokens == 32
    math = ReasoningDataModule(str(reasoning_data_dir), ["math"], val_tasks=["math/gsm8k"], test_tasks=["math"])
    assert math.eval_tasks("validate") == ["gsm8k"] and math.eval_tasks("test") == MATH_TEST
    assert math.max_new_tokens == 256
    assert ReasoningDataModule(str(reasoning_data_dir), ["math"], max_new_tokens=99).max_new_tokens == 99


def test_training_and_evaluation_batches_on_real_data(reasoning_data_dir, smollm2_tokenizer, caplog):
    data = ReasoningDataModule(
        str(reasoning_data_dir), ["commonsense/arc_challenge"], val_tasks=["commonsense/boolq", "math/gsm8k", "math/aqua"],
        max_eval_records=6, tokenizer=smollm2_tokenizer, batch_size=4, eval_batch_size=18,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="datamodules"):
        data.setup("fit")
    assert len(data._split("train")) == 1119
    assert any(m.startswith("train: 1119 records kept of 1119") for m in caplog.messages)
    train = next(iter(data.train_dataloader()))
    response = smollm2_tokenizer.decode(train["input_ids"][0][train["labels"][0] != -100])
    assert response.startswith("the correct answer is answer") and response.endswith("<|im_end|>")

    (batch,) = list(data.val_dataloader())
    assert batch["tasks"] == ["boolq"] * 6 + ["gsm8k"] * 6 + ["aqua"] * 6
    # reference outputs score as correct under LLM-Adapters' rules (the math test outputs are generated
    # rationales, often wrong: only their `answer` is gold)
    outputs = [smollm2_tokenizer.decode(ids[labels != -100], skip_special_tokens=True)
               for ids, labels in zip(batch["input_ids"], batch["labels"])]  # fmt: skip
    scores = [data.is_correct(t, o, a) for t, o, a in zip(batch["tasks"], outputs, batch["answers"])]
    assert all(scores[:6])
    assert all(data.is_correct(t, f"The answer is {a}", a) for t, a in zip(batch["tasks"][6:12], batch["answers"][6:12]))
    assert data.is_correct("aqua", "The answer is (C)", "C") and data.extract_answer("boolq", "true or false") == "true"


def test_eval_subset_is_seeded_and_in_file_order(reasoning_data_dir):
    def subset(seed: int) -> list[str]:
        data = ReasoningDataModule(str(reasoning_data_dir), ["math"], val_tasks=["math/addsub"], max_eval_records=10, seed=seed)
        return [r.instruction for r in data._eval_records("validate")]

    full = [r.instruction for r in load_records(reasoning_data_dir / "math/test/addsub.json")]
    assert subset(1) == subset(1) != subset(2)
    assert subset(1) == [q for q in full if q in set(subset(1))]


def test_known_empty_outputs_are_dropped_from_training_but_kept_for_evaluation(reasoning_data_dir, caplog):
    data = ReasoningDataModule(str(reasoning_data_dir), ["math"], val_tasks=["math/gsm8k"])
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        train = data._train_records()
    assert len(train) == 3257
    assert any("math_data.json: dropped 3 records with an empty 'output' (records 175, 1448, 2920)" in m for m in caplog.messages)
    assert len(data._eval_records("validate")) == 264
    strict = ReasoningDataModule(str(reasoning_data_dir), ["math"], empty_outputs="error")
    with pytest.raises(DataError, match="math_data.json: record 175: field 'output' is empty"):
        strict._train_records()


def test_every_shared_file_is_valid(reasoning_data_dir):
    for path in sorted(reasoning_data_dir.glob("*/*/*.json")):
        assert load_records(path, output_policy="optional"), path


def test_layout_without_the_shared_data(files, tiny_tokenizer):
    """The same module on a tiny folder of that layout, plus explicit file paths."""
    root = files.root / "reasoning"
    for rel in ("commonsense/train", "commonsense/test", "math/test"):
        (root / rel).mkdir(parents=True)
    files.json("reasoning/commonsense/train/boolq.json", [files.record("q?", "the correct answer is true", answer="true")])
    files.json("reasoning/commonsense/test/boolq.json", [files.record("q?", "the correct answer is false", answer="false")])
    files.json("reasoning/math/test/gsm8k.json", [files.record("1+1?", "", answer="2.0")])
    outside = files.json("my_winogrande.json", [files.record("o?", "option1", answer="option1")])
    known = files.json("piqa.json", [files.record("p?", "solution2", answer="solution2")])
    data = ReasoningDataModule(str(root), ["commonsense"], val_tasks=["commonsense/boolq", str(known)],
                               test_tasks=["math"], tokenizer=tiny_tokenizer)  # fmt: skip
    assert data.eval_tasks("validate") == ["boolq", "piqa"] and data.eval_tasks("test") == ["gsm8k"]
    assert data.max_new_tokens == 256  # math is tested
    data.setup("test")
    (batch,) = list(data.test_dataloader())
    assert batch["answers"] == ["2.0"] and data.is_correct("gsm8k", "it is 2", "2.0")
    with pytest.raises(DataError, match=r"my_winogrande.json: no answer extractor for task 'my_winogrande' \(domain None\); put the file under"):
        ReasoningDataModule(str(root), ["commonsense"], val_tasks=[str(outside)])
