"""Compare models that answered the same items in separate runs: accuracy with 95% intervals
and McNemar's paired test between every two, from their prediction files.

``tools.evaluate`` compares adapters of one base in one run. Models that cannot share a run
(an adapter on an NF4 base beside one on the float base, two recipes, two seeds) are compared
here, item by item, from what ``lightning predict`` wrote for each::

    lightning predict --config configs/quickstart.yaml --model.adapter runs/a/adapter \\
        --trainer.callbacks zoo.callbacks.PredictionWriter --trainer.callbacks.output_file runs/a/predictions.jsonl
    python -m tools.paired --predictions '[bf16=runs/a/predictions.jsonl, nf4=runs/b/predictions.jsonl]'

Each line of a prediction file holds ``task``, ``prompt`` and ``correct``; ``generations.jsonl``
of ``tools.evaluate`` (``entry``, ``item``, ``task``, ``correct``) is read too, one entry per
name. Every file must hold the same items in the same order (checked by task and prompt).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from zoo.cli import one_line_errors
from zoo.inference import parse_named
from zoo.report import markdown_report, score_entries, write_results


class PredictionsError(ValueError):
    """A prediction file that is missing, malformed, or holds other items than the first file."""


def read_predictions(path: str | Path, entry: str | None = None) -> list[dict[str, Any]]:
    """The rows of one JSONL prediction file (of ``entry`` only, for ``tools.evaluate``'s files).

    Raises:
        PredictionsError: the file is missing, a line is not JSON, or a row lacks ``task`` or
            a boolean ``correct`` (the file names the line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: no such prediction file")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"{path}, line {number}: not JSON ({err.msg})") from None
            if entry is not None and "entry" in row and row["entry"] != entry:
                continue
            for field, kind in (("task", str), ("correct", bool)):
                if not isinstance(row.get(field), kind):
                    raise PredictionsError(
                        f"{path}, line {number}: field {field!r} must be a {kind.__name__}, got {row.get(field)!r} "
                        "(write predictions of data with answers: lightning predict with zoo.callbacks.PredictionWriter)"
                    )
            rows.append(row)
    if not rows:
        raise PredictionsError(f"{path}: no predictions" + (f" of entry {entry!r}" if entry else ""))
    return rows


def _item_key(row: dict[str, Any]) -> tuple[str, Any]:
    return row["task"], row.get("prompt", row.get("item"))


def paired(predictions: list[str], output: str | None = None, title: str = "Paired comparison") -> dict[str, Any]:
    """Score each prediction file and test every two on their shared items.

    Args:
        predictions: ``name=path`` per model (a bare path is named by its file's folder).
        output: a folder for ``results.json`` and ``results.md``; nothing is written without it.
        title: the report's heading.

    Raises:
        PredictionsError: a file is missing or malformed, or its items differ from the first file's.
        ValueError: two files get the same name.
    """
    named = parse_named(predictions, what="prediction file", by_parent=True)
    if len(named) < 2:
        raise PredictionsError("give at least two prediction files to compare")
    rows = {name: read_predictions(path, entry=name) for name, path in named.items()}
    first_name, first_rows = next(iter(rows.items()))
    keys = [_item_key(r) for r in first_rows]
    for name, these in rows.items():
        if len(these) != len(keys):
            raise PredictionsError(
                f"{named[name]} holds {len(these)} items, {named[first_name]} {len(keys)}: not the same items"
            )
        for i, (row, key) in enumerate(zip(these, keys)):
            if _item_key(row) != key:
                raise PredictionsError(
                    f"{named[name]}, item {i + 1}: task/prompt differs from item {i + 1} of {named[first_name]}: "
                    "the files must answer the same items in the same order"
                )
    tasks = list(dict.fromkeys(task for task, _ in keys))
    items = [SimpleNamespace(task=task) for task, _ in keys]
    correct = {name: [bool(r["correct"]) for r in these] for name, these in rows.items()}
    results = {
        "title": title,
        "predictions": named,
        "entries": list(named),
        "tasks": tasks,
        "items": {t: sum(task == t for task, _ in keys) for t in tasks},
        **score_entries(items, correct, tasks),
    }
    if output is not None:
        write_results(results, output)
    return results


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        print(markdown_report(CLI(paired, as_positional=False)))


if __name__ == "__main__":
    main()
