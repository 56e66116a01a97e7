"""Multiple-choice items: the question, its choices and the gold index, for log-likelihood scoring.

Scoring a model by the log-probability it gives each choice (as lm-evaluation-harness does)
measures what it knows, not whether it writes an answer in the expected format. The items come
from two kinds of file:

* **LLM-Adapters records** (the shared reasoning sets): the choices are written into the
  instruction text, and ``answer`` names the right one (``answer3``, ``solution1``, ``true``,
  ``A``). :func:`parse_record` reads every layout of those sets: ARC, OpenBookQA and Social IQa
  (``Answer1: ...``), PIQA (``Solution1: ...``), BoolQ (true/false), HellaSwag (``Ending1: ...``),
  WinoGrande (``Option1: ...``, a blank ``_`` in the sentence) and AQuA (``(A) ...``).
* **Files that carry the choices**: records with ``choices`` (a list of strings) and ``gold``
  (the index of the right one); the question is ``instruction`` (and ``input``, if any).

An item gives its choices in two prompt forms (:meth:`ChoiceItem.requests`):

* ``cloze``, lm-eval's form: context ``"Question: <question>\\nAnswer:"``, continuation
  ``" <choice text>"`` (a sentence to complete is its own context; WinoGrande puts each option
  into the blank and scores the rest of the sentence, lm-eval's partial scoring);
* ``adapter``, the form an LLM-Adapters adapter is trained on: context the record's own
  instruction (in the adapter's template, applied by the scorer), continuation
  ``"the correct answer is <label>"`` for every label (AQuA's: ``"The answer is (<letter>)."``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datamodules.errors import DataError
from datamodules.records import PathLike, Record, read_objects, validate_record

PromptForm = Literal["cloze", "adapter"]
"""``cloze``: lm-eval's question/answer form; ``adapter``: the LLM-Adapters training format."""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question.

    Attributes:
        task: the task it belongs to (``arc_easy``).
        question: the question (or the sentence to complete) without its choices.
        choices: the text of each choice.
        labels: the name each choice has in the record's answer format (``answer1``, ``true``,
            ``A``); the adapter form scores ``"the correct answer is <label>"``.
        gold: the index of the right choice.
        prompt: the record's instruction (and input) as a model trained on it reads it.
        kind: ``question``, ``completion`` (the choices continue the text) or ``blank`` (each
            choice fills the ``_`` of the sentence).
        source: where it came from (``test/piqa.json: record 17``), for error messages.
    """

    task: str
    question: str
    choices: tuple[str, ...]
    labels: tuple[str, ...]
    gold: int
    prompt: str
    kind: Literal["question", "completion", "blank"] = "question"
    source: str = ""
    answer_template: str = "the correct answer is {label}"
    """How the record's training output names the right choice (the adapter form's continuation)."""
    instruction: str = ""
    """The record's ``instruction`` field (``prompt`` when empty): the adapter form renders
    instruction and input apart in the template, as training did."""
    input: str = ""
    """The record's ``input`` field (often empty)."""

    def template_fields(self) -> tuple[str, str]:
        """``(instruction, input)`` as a prompt template renders them for the adapter form."""
        return (self.instruction or self.prompt, self.input)

    def requests(self, form: PromptForm) -> list[tuple[str, str]]:
        """``(context, continuation)`` for each choice, in choice order.

        The adapter form's context is the bare record prompt: the caller wraps it in the
        adapter's template.
        """
        if form == "adapter":
            return [(self.prompt, self.answer_template.format(label=label)) for label in self.labels]
        if form != "cloze":
            raise ValueError(f"unknown prompt form {form!r}; choose 'cloze' or 'adapter'")
        if self.kind == "blank":
            before, after = self.question.split("_", 1)
            return [(before + choice, " " + after.strip()) for choice in self.choices]
        context = self.question if self.kind == "completion" else f"Question: {self.question}\nAnswer:"
        return [(context, " " + choice) for choice in self.choices]


# The LLM-Adapters instruction layouts: opening words → (kind, choice marker, label prefix).
_NUMBERED = {
    "Please choose the correct answer to fill in the blank to complete the given sentence:": ("blank", "Option"),
    "Please choose the correct ending to complete the given sentence:": ("completion", "Ending"),
    "Please choose the correct solution to the question:": ("question", "Solution"),
    "Please choose the correct answer to the question:": ("question", "Answer"),
}
_BOOLQ = "Please answer the following question with true or false, question:"
_FORMAT = re.compile(r"\n\s*Answer format:.*$", re.S)
_LETTERED = re.compile(r"\s*Answer Choices:\s*(.*)$", re.S)


def parse_record(record: Record) -> ChoiceItem:
    """The multiple-choice item an LLM-Adapters record writes out in its instruction.

    Raises:
        DataError: the instruction has no known layout, its choices cannot be split, or the
            record's ``answer`` names none of them (the record is named).
    """
    text = record.instruction.strip()
    prompt = f"{record.instruction}\n\n{record.input}" if record.input.strip() else record.instruction
    answer = (record.answer or "").strip()
    where = record.source or f"task {record.task}"

    def item(kind: str, question: str, choices: list[str], labels: list[str], **template: str) -> ChoiceItem:
        folded = [label.lower() for label in labels]
        if answer.lower() not in folded:
            raise DataError(f"{where}: field 'answer' is {answer!r}, expected one of {labels}")
        gold = folded.index(answer.lower())
        fields = {"instruction": record.instruction, "input": record.input}
        return ChoiceItem(
            record.task, question.strip(), tuple(choices), tuple(labels), gold, prompt, kind, where, **template, **fields
        )

    if text.startswith(_BOOLQ):
        question = _FORMAT.sub("", text[len(_BOOLQ) :]).strip()
        question = question if question.endswith("?") else question + "?"
        return item("question", question, ["yes", "no"], ["true", "false"])
    for opening, (kind, marker) in _NUMBERED.items():
        if text.startswith(opening):
            body = _FORMAT.sub("", text[len(opening) :])
            parts = re.split(rf"\s*\b{marker}(\d+):\s*", body)
            numbers = [int(n) for n in parts[1::2]]
            if len(parts) < 5 or numbers != list(range(1, len(numbers) + 1)):
                raise DataError(f"{where}: expected '{marker}1: ... {marker}2: ...' in the instruction, found {numbers}")
            labels = [f"{marker.lower()}{n}" for n in numbers]
            if kind == "blank" and parts[0].count("_") != 1:
                raise DataError(f"{where}: expected one blank '_' in the sentence to complete")
            return item(kind, parts[0], [c.strip() for c in parts[2::2]], labels)
    lettered = _LETTERED.search(text)
    if lettered:
        pairs = re.findall(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)", lettered.group(1), re.S)
        if len(pairs) < 2:
            raise DataError(f"{where}: expected '(A) ... (B) ...' after 'Answer Choices:'")
        choices, letters = [c for _, c in pairs], [letter for letter, _ in pairs]
        return item("question", text[: lettered.start()], choices, letters, answer_template="The answer is ({label}).")
    raise DataError(
        f"{where}: no multiple-choice layout in the instruction (expected LLM-Adapters' 'Please choose ...' or "
        f"'Answer Choices: (A) ...' text, or a record with 'choices' and 'gold')"
    )


def parse_object(obj: Any, where: str, task: str) -> ChoiceItem:
    """One record of a multiple-choice file: ``choices`` + ``gold``, else an LLM-Adapters record.

    Raises:
        DataError: naming the record and the field that is missing or wrong.
    """
    if isinstance(obj, dict) and "choices" in obj:
        choices, gold = obj["choices"], obj.get("gold")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise DataError(f"{where}: field 'gold' must be the index of the right choice (0 to {len(choices) - 1}), got {gold!r}")
        record = validate_record(obj, where, task, require_output=False)
        prompt = f"{record.instruction}\n\n{record.input}" if record.input.strip() else record.instruction
        labels = tuple(f"answer{i + 1}" for i in range(len(choices)))
        return ChoiceItem(
            task, prompt.strip(), tuple(c.strip() for c in choices), labels, gold, prompt, "question", where,
            instruction=record.instruction, input=record.input,
        )
    return parse_record(validate_record(obj, where, task, require_output=False))


def load_choice_items(path: PathLike, task: str | None = None) -> list[ChoiceItem]:
    """Every record of a ``.json``/``.jsonl`` file as a multiple-choice item (task: the file's stem).

    Raises:
        DataError: the file, or any record of it, is not multiple choice (named as above).
    """
    task = task or Path(path).stem
    return [parse_object(obj, where, task) for where, obj in read_objects(path)]
