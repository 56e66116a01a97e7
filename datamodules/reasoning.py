"""The commonsense and math reasoning sets of LLM-Adapters (the S²FT paper's benchmarks).

Expected layout of ``data_dir`` (as in ``shared/data/reasoning``)::

    <data_dir>/commonsense/train/{boolq,arc_easy,...}.json
    <data_dir>/commonsense/test/{boolq,piqa,...}.json
    <data_dir>/math/train/math_data.json
    <data_dir>/math/test/{gsm8k,addsub,multiarith,singleeq,aqua}.json

A task is named by ``<domain>/<task>`` (``commonsense/boolq``), by a whole ``<domain>`` (every file of
that domain's folder for the split, sorted by name), or by a path to a ``.json``/``.jsonl`` file (its
domain is the ``commonsense``/``math`` folder in its path, or that of a known task name). Training
reads ``train/`` folders, validation and test read ``test/`` folders. Metrics use the bare task name
(``boolq``, ``gsm8k``), scored as LLM-Adapters does (``datamodules/answers.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from datamodules.answers import COMMONSENSE_PATTERNS, MATH_TASKS, AnswerExtractor, extractor_for_task
from datamodules.base import FineTuneDataModule, eval_stage
from datamodules.errors import DataError
from datamodules.records import Record, load_records

DOMAINS = ("commonsense", "math")
# LLM-Adapters' generation lengths: commonsense_evaluate.py uses 32 new tokens, the math evaluation 256.
DEFAULT_MAX_NEW_TOKENS = {"commonsense": 32, "math": 256}


@dataclass(frozen=True)
class TaskFile:
    """One task's file for one split."""

    task: str
    domain: Optional[str]
    path: Path


def _domain_of(path: Path) -> Optional[str]:
    """The domain folder in the path, else the domain of a known task name (``boolq`` -> commonsense)."""
    folder = next((part for part in reversed(path.parts) if part in DOMAINS), None)
    if folder:
        return folder
    name = path.stem.lower().replace("-", "_")
    if name in COMMONSENSE_PATTERNS:
        return "commonsense"
    return "math" if name in MATH_TASKS or name == "aqua" else None


def _task_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".json", ".jsonl"))


def resolve_tasks(data_dir: Path, specs: list[str], split: str) -> list[TaskFile]:
    """Turns task specs into files of ``split`` ("train" or "test"), in spec order without duplicates.

    Raises:
        DataError: For an unknown domain, a missing file (the message lists what is available), or two
            files with the same task name.
    """
    resolved: dict[str, TaskFile] = {}
    for spec in specs:
        for item in _resolve_one(data_dir, spec, split):
            other = resolved.get(item.task)
            if other is not None and other.path != item.path:
                raise DataError(f"{item.path}: task name '{item.task}' is also used by {other.path}")
            resolved[item.task] = item
    return list(resolved.values())


def _resolve_one(data_dir: Path, spec: str, split: str) -> list[TaskFile]:
    if Path(spec).suffix in (".json", ".jsonl"):
        path = Path(spec)
        return [TaskFile(path.stem, _domain_of(path.resolve()), path)]
    domain, _, task = spec.strip("/").partition("/")
    folder = data_dir / domain / split
    if domain not in DOMAINS or not folder.is_dir():
        raise DataError(f"{folder}: no such folder for task '{spec}' (domains: {', '.join(DOMAINS)})")
    available = _task_files(folder)
    if not task:
        if not available:
            raise DataError(f"{folder}: no .json/.jsonl files for '{spec}'")
        return [TaskFile(p.stem, domain, p) for p in available]
    matches = [p for p in available if p.stem == task]
    if not matches:
        names = ", ".join(p.stem for p in available) or "none"
        raise DataError(f"{folder / (task + '.json')}: no {split} file for task '{spec}' (available: {names})")
    return [TaskFile(task, domain, matches[0])]


class ReasoningDataModule(FineTuneDataModule):
    """Train on LLM-Adapters reasoning sets, validate and test on their test sets with their scoring.

    See :class:`FineTuneDataModule` for the shared arguments (tokenizer, prompt_style, max_length, ...).

    Args:
        data_dir: Root folder laid out as in the module docstring (e.g. ``../shared/data/reasoning``).
        train_tasks: Training tasks, e.g. ``[commonsense]`` or ``[commonsense/boolq, commonsense/arc_easy]``.
            Only ``fit`` reads them (validate and test need no training files).
        val_tasks: Test sets to validate on, e.g. ``[math/gsm8k]``; empty: no validation.
        test_tasks: Test sets for ``trainer.test``; defaults to ``val_tasks``.
        max_eval_records: If set, validate and test on at most this many records per task (a seeded
            subset, kept in file order), for quick runs.
        max_new_tokens: Generation length; defaults to LLM-Adapters' 32 when every evaluation task is
            commonsense, else 256.
        empty_outputs: ``"drop"`` (default here: ``math/train/math_data.json`` has 3 records with an empty
            ``output``; they are left out and logged) or ``"error"``.
    """

    def __init__(
        self,
        data_dir: str,
        train_tasks: Optional[list[str]] = None,
        val_tasks: Optional[list[str]] = None,
        test_tasks: Optional[list[str]] = None,
        max_eval_records: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
        empty_outputs: Literal["error", "drop"] = "drop",
        **kwargs: Any,
    ) -> None:
        data_root = Path(data_dir)
        if not data_root.is_dir():
            raise DataError(f"{data_root}: data_dir not found")
        if max_eval_records is not None and max_eval_records < 1:
            raise ValueError(f"max_eval_records must be >= 1, got {max_eval_records}")
        val_files = resolve_tasks(data_root, list(val_tasks or []), "test")
        test_specs = val_tasks if test_tasks is None else test_tasks
        test_files = resolve_tasks(data_root, list(test_specs or []), "test")
        for f in val_files + test_files:
            try:
                extractor_for_task(f.task, f.domain)
            except ValueError as err:
                raise DataError(f"{f.path}: {err}; put the file under a commonsense/ or math/ folder") from None
        if max_new_tokens is None:
            domains = {f.domain for f in val_files + test_files}
            max_new_tokens = max((DEFAULT_MAX_NEW_TOKENS.get(d or "math", 256) for d in domains), default=256)
        super().__init__(max_new_tokens=max_new_tokens, empty_outputs=empty_outputs, **kwargs)
        self.data_dir = data_root
        self.train_tasks = list(train_tasks or [])
        self.val_files = val_files
        self.test_files = test_files
        self.max_eval_records = max_eval_records
        self._domains = {f.task: f.domain for f in val_files + test_files}

    def eval_tasks(self, stage: str) -> list[str]:
        files = self.test_files if eval_stage(stage) == "test" else self.val_files
        return [f.task for f in files]

    def _extractor(self, task: str) -> AnswerExtractor:
        return extractor_for_task(task, self._domains.get(task))

    def _train_records(self) -> list[Record]:
        if not self.train_tasks:
            raise DataError("no train_tasks: fit needs training data, e.g. train_tasks: [commonsense]")
        files = resolve_tasks(self.data_dir, self.train_tasks, "train")
        return [r for f in files for r in load_records(f.path, f.task, self.train_output_policy)]

    def _eval_records(self, stage: str) -> list[Record]:
        files = self.test_files if eval_stage(stage) == "test" else self.val_files
        return [r for f in files for r in self._eval_subset(load_records(f.path, f.task, "optional"), f.task)]

    def _eval_files(self, split: str) -> list[tuple[Path, str]]:
        files = self.test_files if eval_stage(split) == "test" else self.val_files
        return [(f.path, f.task) for f in files]

    def _eval_subset(self, items: list[Any], task: str) -> list[Any]:
        """``max_eval_records`` of a task's records: a seeded sample kept in file order."""
        limit = self.max_eval_records
        if limit is None or len(items) <= limit:
            return items
        keep = sorted(random.Random(f"{self.seed}:{task}").sample(range(len(items)), limit))
        return [items[i] for i in keep]
