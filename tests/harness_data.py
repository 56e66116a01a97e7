"""A small LLM-Adapters data folder for the lm-eval bridge's tests (importable by name)."""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTION = "Please choose the correct answer to the question: {q}\n\n{choices}\n\nAnswer format: {labels}"
BLANK = "Please choose the correct answer to fill in the blank to complete the given sentence: {s}\n\n" \
    "Option1: {a}\n\nOption2: {b}\n\nAnswer format: option1/option2"  # fmt: skip
WORDS = ["apple", "river", "stone", "cloud", "music", "garden", "window", "winter"]


def write_reasoning_data(root: Path, items: int = 10, seed: int = 0) -> Path:
    """``root/commonsense/test/{arc_easy,winogrande}.json`` in the LLM-Adapters layouts: four-way
    questions (``Answer1: ...``) and two-way blanks (``Option1: ...``); returns ``root``."""
    rng = random.Random(seed)
    questions, blanks = [], []
    for _ in range(items):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        choices = [str(a + b), str(a * b + 1), str(a + b + 3), rng.choice(WORDS)]
        rng.shuffle(choices)
        gold = choices.index(str(a + b)) + 1
        text = "\n".join(f"Answer{i + 1}: {c}" for i, c in enumerate(choices))
        labels = "/".join(f"answer{i + 1}" for i in range(4))
        questions.append(
            _record(QUESTION.format(q=f"What is {a} plus {b}?", choices=text, labels=labels), f"answer{gold}")
        )
        first, second = rng.sample(WORDS, 2)
        sentence = f"The {first} was bigger than the {second} because the _ grew all year."
        blanks.append(_record(BLANK.format(s=sentence, a=first, b=second), f"option{rng.randint(1, 2)}"))
    folder = root / "commonsense" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arc_easy.json").write_text(json.dumps(questions, indent=1))
    (folder / "winogrande.json").write_text(json.dumps(blanks, indent=1))
    return root


def _record(instruction: str, answer: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}
