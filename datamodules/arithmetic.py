"""The built-in default data: generated arithmetic word problems (the quickstart's task).

Small enough for SmolLM2-135M to learn on a CPU in a few hundred steps, and scored exactly like the math
sets (last number), so held-out accuracy shows at a glance whether fine-tuning worked.
"""

from __future__ import annotations

from typing import Any, Literal

from datamodules.answers import AnswerExtractor, LastNumber
from datamodules.arithmetic_problems import Problem, generate_splits
from datamodules.base import FineTuneDataModule, eval_stage
from datamodules.records import Record

TASK = "arithmetic"


class ArithmeticDataModule(FineTuneDataModule):
    """Seeded arithmetic word problems with disjoint train, validation and test splits.

    Every problem looks like "Sam has 12 apples. He buys 7 more and gives away 5. How many apples does Sam
    have now?" and is answered "12 + 7 = 19. 19 - 5 = 14. The answer is 14." (see
    ``datamodules/arithmetic_problems.py`` for the templates and the disjointness rule). ``seed`` also
    fixes the problems. See :class:`FineTuneDataModule` for the shared arguments.

    Args:
        num_train: Training problems.
        num_val: Validation problems.
        num_test: Test problems.
        max_operand: Largest operand of additions and subtractions (products stay within 10 x 10).
        shapes: ``basic`` (seven one- and two-step templates) or ``varied`` (eight more, closer to real
            word problems: distractor numbers, three addends, division, mixed two-step problems).
        max_new_tokens: Generation length for evaluation (worked solutions are about 35 tokens).
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 200,
        max_operand: int = 50,
        shapes: Literal["basic", "varied"] = "basic",
        max_new_tokens: int = 48,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.max_operand = max_operand
        self.shapes = shapes
        self._problems: dict[str, list[Problem]] | None = None

    def problems(self, split: str) -> list[Problem]:
        """The problems of ``split`` ("train", "val" or "test"); generated once, deterministically."""
        if self._problems is None:
            sizes = {"test": self.num_test, "val": self.num_val, "train": self.num_train}
            self._problems = generate_splits(sizes, self.seed, self.max_operand, self.shapes)
        return self._problems[split]

    def eval_tasks(self, stage: str) -> list[str]:
        count = self.num_test if eval_stage(stage) == "test" else self.num_val
        return [TASK] if count else []

    def _extractor(self, task: str) -> AnswerExtractor:
        return LastNumber()

    def _train_records(self) -> list[Record]:
        return self._records_of("train")

    def _eval_records(self, stage: str) -> list[Record]:
        return self._records_of("test" if eval_stage(stage) == "test" else "val")

    def _records_of(self, split: str) -> list[Record]:
        return [Record(p.question, "", p.solution, str(p.answer), TASK) for p in self.problems(split)]
