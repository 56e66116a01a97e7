"""Fine-tuning on your own instruction files (Alpaca / LLM-Adapters records, JSON or JSONL)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

from datamodules.answers import AnswerExtractor, AnswerFormat, make_extractor
from datamodules.base import FineTuneDataModule, eval_stage
from datamodules.records import Record, load_files


def _stems(paths: list[str]) -> list[str]:
    """Unique file stems, in order: the task names of those files."""
    return list(dict.fromkeys(Path(p).stem for p in paths))


class InstructionDataModule(FineTuneDataModule):
    """Instruction records from ``.json`` (a list) or ``.jsonl`` files; each file's stem is its task name.

    Validation uses ``val_files`` when given, otherwise a seeded ``val_fraction`` of the training records
    (held out from training); with neither there is no validation. See :class:`FineTuneDataModule` for
    the shared arguments (tokenizer, prompt_style, max_length, batch sizes, seed, ...).

    Args:
        train_files: Files to train on (``fit`` only: ``test`` and ``predict`` need none).
        val_files: Files to validate on.
        test_files: Files for ``trainer.test`` (and, by default, ``trainer.predict``).
        val_fraction: Share of the training records held out for validation when ``val_files`` is empty
            (at least one record when > 0).
        answer_format: How evaluation reads the answer from a generation: ``"exact"`` (whole text,
            whitespace-normalized), ``"number"`` (last number, LLM-Adapters math rule), ``"choice"`` (first
            true/false/answerN/solutionN/optionN/endingN) or ``"letter"`` (first A-E). Records without
            an ``answer`` field are scored against the answer their ``output`` states.
        max_new_tokens: Generation length for evaluation.
    """

    def __init__(
        self,
        train_files: Optional[list[str]] = None,
        val_files: Optional[list[str]] = None,
        test_files: Optional[list[str]] = None,
        val_fraction: float = 0.0,
        answer_format: AnswerFormat = "exact",
        max_new_tokens: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and not train_files and not val_files:
            raise ValueError("val_fraction holds out training records, but no train_files are given")
        self.train_files = list(train_files or [])
        self.val_files = list(val_files or [])
        self.test_files = list(test_files or [])
        self.val_fraction = val_fraction
        self.answer_format = answer_format
        self._answer_extractor = make_extractor(answer_format)
        self._held_out: Optional[tuple[list[Record], list[Record]]] = None

    def eval_tasks(self, stage: str) -> list[str]:
        if eval_stage(stage) == "test":
            return _stems(self.test_files)
        if self.val_files:
            return _stems(self.val_files)
        return _stems(self.train_files) if self.val_fraction > 0 else []

    def _extractor(self, task: str) -> AnswerExtractor:
        return self._answer_extractor

    def _train_records(self) -> list[Record]:
        return self._train_val_split()[0]

    def _eval_records(self, stage: str) -> list[Record]:
        if eval_stage(stage) == "test":
            return load_files(self.test_files, output_policy="optional")
        if self.val_files:
            return load_files(self.val_files, output_policy="optional")
        return self._train_val_split()[1]

    def _eval_files(self, split: str) -> Optional[list[tuple[str, str]]]:
        """The test or validation files; ``None`` when validation holds out training records."""
        if eval_stage(split) == "test":
            return [(path, Path(path).stem) for path in self.test_files]
        if self.val_files:
            return [(path, Path(path).stem) for path in self.val_files]
        return None

    def _train_val_split(self) -> tuple[list[Record], list[Record]]:
        """(train, held-out) records; the held-out ones keep file order, grouped by task."""
        if self._held_out is None:
            if not self.train_files:
                raise ValueError(
                    "no train_files: fit needs training files (--data.train_files); test and predict read "
                    "only test_files (and predict_files)"
                )
            records = load_files(self.train_files, self.train_output_policy)
            held: set[int] = set()
            if self.val_fraction > 0 and not self.val_files:
                count = max(1, round(len(records) * self.val_fraction))
                held = set(random.Random(self.seed).sample(range(len(records)), count))
            train = [r for i, r in enumerate(records) if i not in held]
            val = [records[i] for i in sorted(held)]
            order = {task: n for n, task in enumerate(self.eval_tasks("validate"))}
            val.sort(key=lambda r: order.get(r.task, len(order)))
            self._held_out = (train, val)
        return self._held_out
