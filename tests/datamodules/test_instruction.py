"""InstructionDataModule: files, the validation split, tasks, and scoring."""

from __future__ import annotations

import logging

import pytest

from datamodules import DataError, InstructionDataModule


def _rows(files, n: int, prefix: str = "q") -> list[dict]:
    return [files.record(f"{prefix}{i}", f"out {i}") for i in range(n)]


def test_json_and_jsonl_files_train_together(files, tiny_tokenizer):
    a = files.json("alpaca.json", _rows(files, 3, "a"))
    b = files.jsonl("more.jsonl", _rows(files, 2, "b"))
    data = InstructionDataModule(train_files=[str(a), str(b)], tokenizer=tiny_tokenizer)
    data.setup("fit")
    assert [e.task for e in data._split("train")] == ["alpaca"] * 3 + ["more"] * 2
    assert data.eval_tasks("validate") == [] and data.val_dataloader() == []


def test_val_fraction_is_a_seeded_disjoint_hold_out(files, tiny_tokenizer):
    a = files.json("a.json", _rows(files, 30, "a"))
    b = files.json("b.json", _rows(files, 10, "b"))

    def split(seed: int) -> tuple[list[str], list[str]]:
        data = InstructionDataModule([str(a), str(b)], val_fraction=0.25, seed=seed, tokenizer=tiny_tokenizer)
        train, val = data._train_val_split()
        return [r.instruction for r in train], [r.instruction for r in val]

    train, val = split(1)
    assert len(val) == 10 and len(train) == 30
    assert not set(train) & set(val) and len(set(train) | set(val)) == 40
    assert split(1) == (train, val) and split(2)[1] != val
    data = InstructionDataModule([str(a), str(b)], val_fraction=0.25, seed=1, tokenizer=tiny_tokenizer)
    assert data.eval_tasks("validate") == ["a", "b"]
    tasks = [r.task for r in data._eval_records("validate")]
    assert tasks == sorted(tasks)  # grouped in eval_tasks order


def test_val_files_and_test_files_name_the_tasks(files, tiny_tokenizer):
    train = files.json("train.json", _rows(files, 4))
    dev, other = files.json("dev.json", _rows(files, 2)), files.jsonl("other.jsonl", _rows(files, 1))
    data = InstructionDataModule([str(train)], val_files=[str(dev)], test_files=[str(other), str(dev)],
                                 val_fraction=0.5, tokenizer=tiny_tokenizer)  # fmt: skip
    assert data.eval_tasks("validate") == ["dev"]
    assert data.eval_tasks("test") == ["other", "dev"]
    assert len(data._train_records()) == 4  # val_files given: nothing held out


def test_answers_default_to_what_the_output_says(files, tiny_tokenizer):
    rows = [files.record("q", "So 3 + 4 = 7. The answer is 7."), files.record("r", "text", answer="42")]
    path = files.json("t.json", rows)
    exact = InstructionDataModule([str(path)], val_files=[str(path)], tokenizer=tiny_tokenizer)
    number = InstructionDataModule([str(path)], val_files=[str(path)], answer_format="number", tokenizer=tiny_tokenizer)
    records = exact._eval_records("validate")
    assert [exact.reference_answer(r) for r in records] == ["So 3 + 4 = 7. The answer is 7.", "42"]
    assert [number.reference_answer(r) for r in records] == ["7", "42"]
    assert number.is_correct("t", "I think 7", "7") and not number.is_correct("t", "8", "7")
    assert exact.is_correct("t", " text ", "text") and exact.extract_answer("t", "a  b") == "a b"


def test_truncation_and_dropping_are_reported_per_split(files, tiny_tokenizer, caplog):
    rows = [files.record("q", "short"), files.record("q", "long " * 40), files.record("q" * 400, "x")]
    path = files.json("t.json", rows)
    data = InstructionDataModule([str(path)], val_files=[str(path)], max_length=200, tokenizer=tiny_tokenizer)
    with caplog.at_level(logging.INFO, logger="datamodules"):
        data.setup("fit")
    assert len(data._split("train")) == 2
    messages = [m for m in caplog.messages if "records kept" in m]
    assert len(messages) == 2
    assert messages[0].startswith("train: 2 records kept of 3; 1 truncated (response cut to fit max_length=200), 1 dropped")
    assert messages[1].startswith("validate: 2 records kept of 3; 1 truncated")
    data.setup("fit")  # again: nothing re-encoded, nothing re-logged
    assert len([m for m in caplog.messages if "records kept" in m]) == 2


def test_bad_training_data_stops_setup(files, tiny_tokenizer):
    path = files.json("t.json", [files.record(), files.record(output=7)])
    data = InstructionDataModule([str(path)], tokenizer=tiny_tokenizer)
    with pytest.raises(DataError, match=f"{path}: record 1: field 'output' must be a string, got int"):
        data.setup("fit")


def test_empty_outputs_drop_option(files, tiny_tokenizer):
    path = files.json("t.json", [files.record(), files.record(output="")])
    with pytest.raises(DataError, match="record 1: field 'output' is empty"):
        InstructionDataModule([str(path)], tokenizer=tiny_tokenizer).setup("fit")
    data = InstructionDataModule([str(path)], empty_outputs="drop", tokenizer=tiny_tokenizer)
    data.setup("fit")
    assert len(data._split("train")) == 1


def test_all_records_dropped_is_an_error(files, tiny_tokenizer):
    path = files.json("t.json", [files.record("q" * 300)])
    with pytest.raises(DataError, match="train: all 1 records were dropped: no prompt fits max_length=64"):
        InstructionDataModule([str(path)], max_length=64, tokenizer=tiny_tokenizer).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"train_files": [], "val_fraction": 0.1}, "val_fraction holds out training records, but no train_files"),
        ({"prompt_style": "llama"}, "unknown prompt_style 'llama'"),
        ({"answer_format": "fuzzy"}, "unknown answer_format 'fuzzy'"),
        ({"empty_outputs": "skip"}, "unknown empty_outputs 'skip'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InstructionDataModule(**{"train_files": ["x.json"], **kwargs})


def test_test_and_predict_need_no_training_files(files, tiny_tokenizer):
    test = files.jsonl("sums.jsonl", [files.record("Add 2 and 1.", "2 + 1 = 3. The answer is 3.")])
    data = InstructionDataModule(test_files=[str(test)], tokenizer=tiny_tokenizer, answer_format="number")
    data.setup("test")
    (batch,) = list(data.test_dataloader())
    assert batch["tasks"] == ["sums"] and batch["answers"] == ["3"]
    data.setup("predict")
    assert len(list(data.predict_dataloader())) == 1
    with pytest.raises(ValueError, match="no train_files: fit needs training files"):
        data.setup("fit")
