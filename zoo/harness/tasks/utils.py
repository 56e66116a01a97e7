"""The documents of ftzoo's offline lm-eval tasks: the LLM-Adapters multiple-choice test sets.

Each task YAML beside this file names one test set (``dataset_kwargs.reasoning_task``:
``commonsense/arc_easy``) and loads it with :func:`load` (its ``custom_dataset``), so nothing
comes from a hub. lm-eval calls :func:`load` with the task's metadata, where the data folder
arrives as ``data_dir`` (``tools.harness --data_dir``, or lm-eval's own
``--metadata '{"data_dir": "..."}'``); without one, ``$FTZOO_REASONING_DATA``, then
``shared/data/reasoning`` beside the repository.

The records are parsed by :mod:`datamodules.choices` (every LLM-Adapters layout, and files with
``choices`` + ``gold``); a document carries the cloze form lm-eval's own ARC/PIQA/BoolQ tasks
use (``"Question: ...\\nAnswer:"`` + ``" choice"``), taken from :meth:`ChoiceItem.requests`,
so ftzoo's own scorer and lm-eval read the same text. WinoGrande-style blanks use lm-eval's
partial scoring: one context per option, the rest of the sentence scored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from datamodules.choices import ChoiceItem, load_choice_items
from datamodules.errors import DataError
from datamodules.reasoning import resolve_tasks

DATA_ENV = "FTZOO_REASONING_DATA"
"""Environment variable naming the LLM-Adapters data folder (as the tests read it)."""


def default_data_dir() -> Path:
    """``$FTZOO_REASONING_DATA``, else ``shared/data/reasoning`` beside the repository."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "reasoning"


def load(reasoning_task: str, data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """The ``test`` split of one LLM-Adapters set as lm-eval documents (a task's ``custom_dataset``).

    Args:
        reasoning_task: ``<domain>/<task>`` under the data folder (``commonsense/piqa``).
        data_dir: the folder holding ``commonsense/`` and ``math/`` (see the module docstring).
        _: the rest of the task's metadata (lm-eval passes all of it).

    Raises:
        DataError: the folder or the file is missing (naming both, and how to pass the folder),
            or a record is not multiple choice (naming the record).
    """
    folder = Path(data_dir) if data_dir else default_data_dir()
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no LLM-Adapters data folder for task {reasoning_task!r}; pass it with "
            f'--data_dir (python -m tools.harness), --metadata \'{{"data_dir": "<folder>"}}\' (lm_eval) '
            f"or ${DATA_ENV}"
        )
    (found,) = resolve_tasks(folder, [reasoning_task], "test")
    docs = [to_doc(item) for item in load_choice_items(found.path, found.task)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def to_doc(item: ChoiceItem) -> dict[str, Any]:
    """One item as an lm-eval document in the cloze form.

    ``query`` + ``" "`` + each of ``choices`` is what a question scores; a blank scores
    ``" " + continuation`` after each of ``contexts`` (the sentence up to the blank, filled).
    """
    requests = item.requests("cloze")
    return {
        "query": requests[0][0],
        "choices": list(item.choices),
        "contexts": [context for context, _ in requests],
        "continuation": requests[0][1].strip(),
        "gold": item.gold,
        "kind": item.kind,
        "source": item.source,
    }
