"""Answer extraction and scoring, following the LLM-Adapters evaluation scripts exactly.

LLM-Adapters (``commonsense_evaluate.py`` / ``evaluate.py``) scores a generation like this:

* commonsense: ``re.findall(<task pattern>, generation.strip())``, the *first* match is the prediction,
  correct iff it equals the label string (``"answer2 ... answer3"`` predicts ``answer2``; matching is
  case-sensitive, so ``"True"`` is not ``true``);
* math: commas removed, ``re.findall(r"-?\\d+\\.?\\d*", ...)``, the *last* number is the prediction,
  correct iff ``abs(float(label) - pred) <= 0.001`` (no number: wrong);
* AQuA: the first of ``A|B|C|D|E`` anywhere in the stripped generation.

Each rule is a small strategy object; :func:`extractor_for_task` picks one by task name.
"""

from __future__ import annotations

import re
from typing import Literal, Optional, Protocol

NUMBER_PATTERN = r"-?\d+\.?\d*"
MATH_TOLERANCE = 0.001
LETTER_PATTERN = r"A|B|C|D|E"
# Any commonsense label, for commonsense tasks without a pattern of their own.
ANY_CHOICE_PATTERN = r"true|false|answer\d|solution\d|option\d|ending\d"

COMMONSENSE_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "arc_challenge": r"answer1|answer2|answer3|answer4|answer5",
    "arc_easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
MATH_TASKS = frozenset({"gsm8k", "addsub", "multiarith", "singleeq", "svamp", "mawps", "math_data", "arithmetic"})

AnswerFormat = Literal["number", "choice", "letter", "exact"]


class AnswerExtractor(Protocol):
    """Pulls the predicted answer out of a generation and decides whether it is right."""

    def extract(self, generation: str) -> Optional[str]:
        """Returns the predicted answer as text, or None when the generation contains none."""
        ...

    def is_correct(self, generation: str, answer: str) -> bool:
        """Whether the generation's predicted answer matches the reference ``answer``."""
        ...


class FirstMatch:
    """The first match of a regular expression (LLM-Adapters' commonsense and AQuA rule).

    Args:
        pattern: The regular expression, e.g. ``"true|false"``.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)

    def extract(self, generation: str) -> Optional[str]:
        match = self.pattern.search(generation.strip())
        return match.group(0) if match else None

    def is_correct(self, generation: str, answer: str) -> bool:
        return self.extract(generation) == answer.strip()


class LastNumber:
    """The last number, compared with a tolerance (LLM-Adapters' math rule).

    Args:
        tolerance: Largest absolute difference still counted as correct.
    """

    def __init__(self, tolerance: float = MATH_TOLERANCE) -> None:
        self.tolerance = tolerance

    def extract(self, generation: str) -> Optional[str]:
        numbers = re.findall(NUMBER_PATTERN, generation.replace(",", ""))
        return numbers[-1].rstrip(".") if numbers else None

    def is_correct(self, generation: str, answer: str) -> bool:
        predicted = self.extract(generation)
        if predicted is None:
            return False
        try:
            label = float(answer.replace(",", ""))
        except ValueError:
            raise ValueError(f"reference answer {answer!r} is not a number") from None
        return abs(label - float(predicted)) <= self.tolerance


class ExactMatch:
    """The whole generation, compared with the reference after collapsing whitespace."""

    def extract(self, generation: str) -> Optional[str]:
        text = " ".join(generation.split())
        return text or None

    def is_correct(self, generation: str, answer: str) -> bool:
        return self.extract(generation) == " ".join(answer.split())


def make_extractor(answer_format: str) -> AnswerExtractor:
    """Returns the extractor for a format name: "number", "choice", "letter" or "exact".

    Raises:
        ValueError: For an unknown name.
    """
    formats = {
        "number": LastNumber,
        "choice": lambda: FirstMatch(ANY_CHOICE_PATTERN),
        "letter": lambda: FirstMatch(LETTER_PATTERN),
        "exact": ExactMatch,
    }
    if answer_format not in formats:
        raise ValueError(f"unknown answer_format {answer_format!r}; choose one of {sorted(formats)}")
    return formats[answer_format]()


def extractor_for_task(task: str, domain: Optional[str] = None) -> AnswerExtractor:
    """Returns the LLM-Adapters extractor for a reasoning task.

    Args:
        task: Task name, e.g. ``"boolq"``, ``"ARC-Easy"``, ``"gsm8k"``, ``"aqua"`` (case and ``-``/``_``
            do not matter).
        domain: ``"commonsense"`` or ``"math"``: the fallback for task names not listed here.

    Raises:
        ValueError: If neither the task nor the domain is known.
    """
    key = task.lower().replace("-", "_")
    if key in COMMONSENSE_PATTERNS:
        return FirstMatch(COMMONSENSE_PATTERNS[key])
    if key == "aqua":
        return FirstMatch(LETTER_PATTERN)
    if key in MATH_TASKS or domain == "math":
        return LastNumber()
    if domain == "commonsense":
        return FirstMatch(ANY_CHOICE_PATTERN)
    raise ValueError(f"no answer extractor for task {task!r} (domain {domain!r})")
