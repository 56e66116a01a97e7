"""Loading and validating instruction records (Alpaca / LLM-Adapters format).

A record is a JSON object ``{"instruction": str, "input": str, "output": str, "answer": str}``. ``input``
may be missing or null (no input), ``answer`` is optional (the short reference answer that evaluation
compares against; numbers are accepted and turned into strings), other keys are ignored.

Files are either a JSON list (``.json``) or JSON Lines (``.jsonl``, one object per line; blank lines
are allowed and are not records). Every problem raises :class:`DataError` naming the file, the record
and the field: nothing is skipped silently, because a silently shrunken training set is a result
nobody can reproduce.

``output_policy`` says what an empty ``output`` means:

* ``"required"``: an error (training data you wrote yourself);
* ``"drop_empty"``: the record is left out and the file's dropped record numbers are logged as a
  warning (published sets with known holes: LLM-Adapters' ``math_data.json`` has 3 empty outputs);
* ``"optional"``: allowed, and ``output`` may even be missing (evaluation sets, scored on ``answer``,
  and prediction files; ``gsm8k.json`` has 3 empty outputs too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lightning.fabric.utilities.rank_zero import rank_zero_only

from datamodules.errors import DataError

PathLike = Union[str, Path]
OutputPolicy = Literal["required", "drop_empty", "optional"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One validated record.

    Attributes:
        instruction: The task text shown to the model.
        input: Extra context; empty when the record has none.
        output: The reference response the model is trained on; may be empty in evaluation and prediction files.
        answer: Short reference answer for evaluation (e.g. ``"answer2"``, ``"14.0"``), or None.
        task: Name of the task the record belongs to (its file's stem unless told otherwise).
        source: Where it came from, e.g. ``"data/train.json: record 17"``, for later error messages.
    """

    instruction: str
    input: str
    output: str
    answer: Optional[str]
    task: str
    source: str = field(default="", compare=False)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_record(obj: Any, where: str, task: str, require_output: bool = True) -> Record:
    """Checks one decoded JSON value and turns it into a :class:`Record`.

    Args:
        obj: The decoded JSON value.
        where: Prefix for error messages, e.g. ``"data/train.json: record 17"``.
        task: Task name to attach to the record.
        require_output: Whether ``output`` must be present and non-empty.

    Returns:
        The record.

    Raises:
        DataError: If the value is not an object or a field is missing, of the wrong type or empty.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type_name(obj)}")

    def text(field: str, required: bool, allow_empty: bool) -> str:
        if field not in obj or (obj[field] is None and not required):
            if required:
                raise DataError(f"{where}: missing field '{field}'")
            return ""
        value = obj[field]
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{field}' must be a string, got {_type_name(value)}")
        if not allow_empty and not value.strip():
            raise DataError(f"{where}: field '{field}' is empty")
        return value

    instruction = text("instruction", required=True, allow_empty=False)
    input_text = text("input", required=False, allow_empty=True)
    output = text("output", required=require_output, allow_empty=not require_output)
    answer = obj.get("answer")
    if answer is not None:
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        elif not isinstance(answer, str):
            raise DataError(f"{where}: field 'answer' must be a string or a number, got {_type_name(answer)}")
        elif not answer.strip():
            raise DataError(f"{where}: field 'answer' is empty")
    return Record(instruction, input_text, output, answer, task, source=where)


def _decode_json_list(text: str, name: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (one object per line? name the file .jsonl)" if err.msg == "Extra data" else ""
        raise DataError(f"{name}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}{hint}") from None
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a JSON list of records, got {_type_name(data)}")
    return [(f"{name}: record {i}", obj) for i, obj in enumerate(data)]


def _decode_json_lines(text: str, name: str) -> list[tuple[str, Any]]:
    items = []
    # split on "\n" only: str.splitlines() would also split inside strings holding U+2028 and friends
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}: record {len(items)} (line {lineno})"
        try:
            items.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from None
    return items


def read_objects(path: PathLike) -> list[tuple[str, Any]]:
    """The decoded JSON values of a ``.json`` list or ``.jsonl`` file, each with where it is
    (``"data/train.json: record 17"``), before any record is validated.

    Raises:
        DataError: the file is missing, unreadable, empty, not JSON, or holds no value.
    """
    path = Path(path)
    name = str(path)
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"{name}: unsupported file type '{path.suffix}'; use .json (a list) or .jsonl")
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: not valid UTF-8 (byte {err.start})") from None
    if not text.strip():
        raise DataError(f"{name}: file is empty")
    decode = _decode_json_lines if path.suffix == ".jsonl" else _decode_json_list
    items = decode(text, name)
    if not items:
        raise DataError(f"{name}: contains no records")
    return items


def load_records(path: PathLike, task: Optional[str] = None, output_policy: OutputPolicy = "required") -> list[Record]:
    """Reads and validates every record of a ``.json`` or ``.jsonl`` file.

    Args:
        path: The file.
        task: Task name for its records; defaults to the file's stem (``boolq.json`` -> ``boolq``).
        output_policy: What an empty ``output`` means (see the module docstring).

    Returns:
        The records, in file order.

    Raises:
        DataError: If the file is missing, unreadable, empty, malformed, any record is invalid, or no
            record is left.
    """
    path = Path(path)
    name = str(path)
    items = read_objects(path)
    task = task or path.stem
    records, dropped = [], []
    for index, (where, obj) in enumerate(items):
        if output_policy == "drop_empty" and _has_blank_output(obj):
            dropped.append(index)
            continue
        records.append(validate_record(obj, where, task, require_output=output_policy != "optional"))
    if dropped:
        _warn_dropped(name, dropped)
    if not records:
        raise DataError(f"{name}: no records left after dropping those with an empty 'output'")
    return records


def _has_blank_output(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("output"), str) and not obj["output"].strip()


@rank_zero_only
def _warn_dropped(name: str, indices: list[int]) -> None:
    shown = ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "")
    log.warning("%s: dropped %d records with an empty 'output' (records %s)", name, len(indices), shown)


def load_files(paths: Sequence[PathLike], output_policy: OutputPolicy = "required") -> list[Record]:
    """Loads several files (each record tagged with its file's stem) and concatenates them in order."""
    return [r for path in paths for r in load_records(path, output_policy=output_policy)]
