"""Loading JSON/JSONL records, and every bad-data error naming file, record and field."""

from __future__ import annotations

import re

import pytest

from datamodules.errors import DataError
from datamodules.records import Record, load_files, load_records


def test_json_list_and_jsonl_give_the_same_records(files):
    rows = [files.record(), files.record("Say hi.", "hi", input="to Bob", answer="hi"), files.record(answer=3.0)]
    from_json = load_records(files.json("train.json", rows))
    from_jsonl = load_records(files.jsonl("train.jsonl", rows))
    assert from_json == from_jsonl
    assert from_json[1] == Record("Say hi.", "to Bob", "hi", "hi", "train")
    assert from_json[2].answer == "3.0"  # numeric answers become strings
    assert from_json[0].answer is None


def test_input_may_be_missing_or_null_and_blank_jsonl_lines_are_not_records(files):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}]
    path = files.text("x.jsonl", "\n" + "\n\n".join(__import__("json").dumps(r) for r in rows) + "\n\n")
    records = load_records(path)
    assert [(r.instruction, r.input) for r in records] == [("a", ""), ("c", "")]


def test_jsonl_with_crlf_and_unicode_line_separators(files):
    path = files.text("u.jsonl", '{"instruction": "a\u2028b", "output": "x"}\r\n{"instruction": "c", "output": "y"}\r\n')
    path.write_text(path.read_text().replace("\\u2028", "\u2028"), encoding="utf-8")  # a raw U+2028 inside a string
    assert [r.instruction for r in load_records(path)] == ["a\u2028b", "c"]


def test_task_defaults_to_stem_and_files_concatenate(files):
    a = files.json("boolq.json", [files.record()])
    b = files.jsonl("piqa.jsonl", [files.record(), files.record()])
    assert [r.task for r in load_files([a, b])] == ["boolq", "piqa", "piqa"]
    assert load_records(a, task="other")[0].task == "other"


def test_output_policies(files, caplog):
    path = files.json("p.json", [{"instruction": "q"}, files.record(output=""), files.record()])
    assert [r.output for r in load_records(path, output_policy="optional")] == ["", "", files.record()["output"]]
    with pytest.raises(DataError, match=re.escape(f"{path}: record 0: missing field 'output'")):
        load_records(path)
    with pytest.raises(DataError, match=re.escape(f"{path}: record 0: missing field 'output'")):
        load_records(path, output_policy="drop_empty")  # missing is not empty

    empty = files.json("e.json", [files.record(), files.record(output=" "), files.record(output="")])
    with pytest.raises(DataError, match=re.escape(f"{empty}: record 1: field 'output' is empty")):
        load_records(empty)
    with caplog.at_level("WARNING", logger="datamodules"):
        assert len(load_records(empty, output_policy="drop_empty")) == 1
    assert caplog.messages == [f"{empty}: dropped 2 records with an empty 'output' (records 1, 2)"]
    only_empty = files.json("o.json", [files.record(output="")])
    with pytest.raises(DataError, match="no records left after dropping those with an empty 'output'"):
        load_records(only_empty, output_policy="drop_empty")


def test_record_knows_its_source(files):
    path = files.jsonl("s.jsonl", [files.record(), files.record()])
    assert load_records(path)[1].source == f"{path}: record 1 (line 2)"


BAD_RECORDS = [
    ({"input": "", "output": "x"}, "record 1: missing field 'instruction'"),
    ({"instruction": "q", "input": ""}, "record 1: missing field 'output'"),
    ({"instruction": "q", "output": 5}, "record 1: field 'output' must be a string, got int"),
    ({"instruction": ["q"], "output": "x"}, "record 1: field 'instruction' must be a string, got list"),
    ({"instruction": None, "output": "x"}, "record 1: field 'instruction' must be a string, got null"),
    ({"instruction": "q", "input": 3, "output": "x"}, "record 1: field 'input' must be a string, got int"),
    ({"instruction": "  ", "output": "x"}, "record 1: field 'instruction' is empty"),
    ({"instruction": "q", "output": ""}, "record 1: field 'output' is empty"),
    ({"instruction": "q", "output": "x", "answer": ""}, "record 1: field 'answer' is empty"),
    ({"instruction": "q", "output": "x", "answer": True}, "record 1: field 'answer' must be a string or a number, got bool"),
    (["q", "x"], "record 1: expected a JSON object, got list"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "message"), BAD_RECORDS)
@pytest.mark.parametrize("kind", ["json", "jsonl"])
def test_bad_record_names_file_record_and_field(files, bad, message, kind):
    rows = [files.record(), bad, files.record()]
    path = files.json("train.json", rows) if kind == "json" else files.jsonl("train.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    expected = f"{path}: {message}"
    if kind == "jsonl":  # JSONL messages also give the line
        expected = expected.replace("record 1:", "record 1 (line 2):")
    assert str(info.value) == expected


def test_malformed_json_gives_line_and_column(files):
    path = files.text("train.json", '[\n  {"instruction": "q", "output": "x"},\n  {"instruction": "q" "output": "x"}\n]')
    with pytest.raises(DataError, match=re.escape(f"{path}: invalid JSON at line 3, column 23: Expecting ',' delimiter")):
        load_records(path)


def test_jsonl_content_in_a_json_file_gets_a_hint(files):
    path = files.text("train.json", '{"instruction": "q", "output": "x"}\n{"instruction": "q", "output": "x"}\n')
    with pytest.raises(DataError, match=r"line 2, column 1: Extra data \(one object per line\? name the file \.jsonl\)"):
        load_records(path)


def test_malformed_jsonl_gives_line(files):
    path = files.text("train.jsonl", '{"instruction": "q", "output": "x"}\n\n{"instruction": "q", output}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}: record 1 (line 3): invalid JSON at column 22")):
        load_records(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.json", "", "file is empty"),
        ("e.jsonl", " \n\n", "file is empty"),
        ("e.json", "[]", "contains no records"),
        ("e.json", '{"instruction": "q", "output": "x"}', "expected a JSON list of records, got dict"),
        ("e.txt", "[]", "unsupported file type '.txt'; use .json (a list) or .jsonl"),
    ],
)
def test_bad_files(files, name, content, message):
    path = files.text(name, content)
    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        load_records(path)


def test_missing_file_and_bad_encoding(files, tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.json'}: file not found")):
        load_records(tmp_path / "nope.json")
    path = tmp_path / "latin.json"
    path.write_bytes(b'[{"instruction": "caf\xe9", "output": "x"}]')
    with pytest.raises(DataError, match=re.escape(f"{path}: not valid UTF-8")):
        load_records(path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
