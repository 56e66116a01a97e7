"""datamodules/choices.py: every multiple-choice layout of the LLM-Adapters sets, files with
``choices`` + ``gold``, both prompt forms, and errors that name the record."""

import json
import re

import pytest
from locations import REASONING_DATA

from datamodules.choices import load_choice_items, parse_record
from datamodules.errors import DataError
from datamodules.records import Record

SHARED_MULTIPLE_CHOICE = ["arc_challenge", "arc_easy", "boolq", "openbookqa", "piqa"]


def _record(instruction: str, answer: str, task: str = "t") -> Record:
    return Record(instruction, "", f"the correct answer is {answer}", answer, task, source="f.json: record 0")


@pytest.mark.parametrize("task", SHARED_MULTIPLE_CHOICE + ["aqua"])
def test_every_shared_record_parses_with_its_stated_choices(task):
    domain = "math" if task == "aqua" else "commonsense"
    path = REASONING_DATA / domain / "test" / f"{task}.json"
    raw = json.loads(path.read_text())
    items = load_choice_items(path)
    assert len(items) == len(raw)
    for item, record in zip(items, raw):
        assert item.labels[item.gold].lower() == record["answer"].strip().lower()
        assert all(choice and "Answer format" not in choice for choice in item.choices)
        stated = re.search(r"Answer format: (\S+)", record["instruction"])
        if stated:  # the record lists its labels: the same ones, in order
            assert list(item.labels) == stated.group(1).split("/")


def test_numbered_answers_split_into_choices():
    item = parse_record(_record(
        "Please choose the correct answer to the question: What is red?\n\nAnswer1: a rose Answer2: the sky "
        "Answer3: grass\n\nAnswer format: answer1/answer2/answer3", "answer1"))
    assert item.question == "What is red?"
    assert item.choices == ("a rose", "the sky", "grass") and item.gold == 0
    assert item.requests("cloze") == [("Question: What is red?\nAnswer:", f" {c}") for c in item.choices]
    prompt = item.prompt
    assert item.requests("adapter") == [(prompt, f"the correct answer is answer{k}") for k in (1, 2, 3)]


def test_hellaswag_choices_continue_the_context():
    item = parse_record(_record(
        "Please choose the correct ending to complete the given sentence: A man sits down. He\n\n"
        "Ending1: eats. Ending2: flies away. Ending3: sings. Ending4: sleeps.\n\n"
        "Answer format: ending1/ending2/ending3/ending4", "ending2"))
    assert item.kind == "completion" and item.gold == 1
    assert item.requests("cloze")[1] == ("A man sits down. He", " flies away.")


def test_winogrande_options_fill_the_blank_and_the_rest_is_scored():
    item = parse_record(_record(
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "The cup fell off the table because _ was unsteady.\n\nOption1: the cup Option2: the table\n\n"
        "Answer format: option1/option2", "option2"))
    assert item.requests("cloze") == [
        ("The cup fell off the table because the cup", " was unsteady."),
        ("The cup fell off the table because the table", " was unsteady."),
    ]


def test_boolq_is_yes_or_no():
    item = parse_record(_record(
        "Please answer the following question with true or false, question: is the sky blue\n\n"
        "Answer format: true/false", "false"))
    assert item.choices == ("yes", "no") and item.labels == ("true", "false") and item.gold == 1
    assert item.requests("cloze")[0] == ("Question: is the sky blue?\nAnswer:", " yes")


def test_aqua_letters_and_its_own_answer_format():
    item = parse_record(_record("What is 2+2? Answer Choices: (A) 3 (B) 4 (C) 5", "B"))
    assert item.choices == ("3", "4", "5") and item.gold == 1
    assert item.requests("adapter")[1][1] == "The answer is (B)."


def test_files_with_choices_and_gold(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Capital of France?", "choices": ["Rome", "Paris"], "gold": 1}\n')
    (item,) = load_choice_items(path)
    assert item.task == "mine" and item.choices == ("Rome", "Paris") and item.gold == 1
    assert item.requests("cloze")[1] == ("Question: Capital of France?\nAnswer:", " Paris")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "q", "choices": ["a"], "gold": 0}', "field 'choices' must be a list of at least two"),
        ('{"instruction": "q", "choices": ["a", "b"], "gold": 2}', "field 'gold' must be the index"),
        ('{"instruction": "q", "choices": ["a", "b"]}', "field 'gold' must be the index"),
        ('{"instruction": "What is 1+1?", "answer": "2"}', "no multiple-choice layout"),
        ('{"instruction": "Please choose the correct answer to the question: q\\n\\nAnswer1: a Answer2: b", '
         '"answer": "answer3"}', "field 'answer' is 'answer3', expected one of ['answer1', 'answer2']"),
    ],
)
def test_bad_records_are_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok?", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: record 1 (line 2): ") + ".*" + re.escape(message)):
        load_choice_items(path)


def test_a_data_module_hands_out_its_test_split_as_choice_items(tmp_path):
    from datamodules import ReasoningDataModule

    extra = tmp_path / "commonsense" / "quiz.jsonl"
    extra.parent.mkdir()
    extra.write_text(json.dumps({"instruction": "Is ice cold?", "input": "In winter.", "choices": ["yes", "no"], "gold": 0}))
    data = ReasoningDataModule(
        data_dir=str(REASONING_DATA), test_tasks=["commonsense/piqa", "commonsense/arc_easy", str(extra)], max_eval_records=4
    )
    items = data.choice_items("test")
    assert [i.task for i in items] == ["piqa"] * 4 + ["arc_easy"] * 4 + ["quiz"]
    records = data._eval_records("test")  # the same seeded subset as generation scores
    assert [i.source for i in items[:8]] == [r.source for r in records[:8]]
    assert items[-1].template_fields() == ("Is ice cold?", "In winter.") and items[-1].choices == ("yes", "no")


def test_a_data_module_that_is_not_multiple_choice_says_which_record():
    from datamodules import ReasoningDataModule

    data = ReasoningDataModule(data_dir=str(REASONING_DATA), test_tasks=["commonsense/boolq", "math/gsm8k"])
    with pytest.raises(DataError, match=r"not multiple choice.*gsm8k.json: record 0: no multiple-choice layout"):
        data.choice_items("test")
