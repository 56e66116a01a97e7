"""A seeded generator of small arithmetic word problems with short worked solutions.

Each problem comes from one of a few templates (one or two steps of +, -, *), with operands up to
``max_operand`` and a non-negative result. The solution shows each step as an equation and ends with
"The answer is N." - the convention of the LLM-Adapters math data, so the same last-number rule scores
both.

Disjoint splits: a problem's *key* is its template and operands (names and objects are decoration), and
every key is used at most once across all splits, so no problem - not even a reworded one - is both
trained on and evaluated. Splits are drawn from one seeded stream in the order test, val, train: the
test set depends only on (seed, max_operand, num_test), and changing ``num_train`` never changes it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

PEOPLE = [
    ("Sam", "He"), ("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Ben", "He"), ("Zoe", "She"),
    ("Max", "He"), ("Lily", "She"), ("Tom", "He"), ("Emma", "She"), ("Noah", "He"), ("Ella", "She"),
]  # fmt: skip
ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "cards", "shells", "coins", "stamps"]
MAX_FACTOR = 10  # multiplication stays within the times table


@dataclass(frozen=True)
class Problem:
    """One word problem.

    Attributes:
        key: Template name and operands: the problem's arithmetic identity.
        question: The word problem.
        solution: Worked solution ending in "The answer is N."
        answer: The result.
    """

    key: tuple
    question: str
    solution: str
    answer: int


@dataclass(frozen=True)
class _Cast:
    name: str
    pronoun: str
    other: str
    item: str


def _add(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b = rng.randint(1, m), rng.randint(1, m)
    q = f"{c.name} has {a} {c.item}. {c.pronoun} gets {b} more. How many {c.item} does {c.name} have now?"
    return Problem(("add", a, b), q, f"{a} + {b} = {a + b}. The answer is {a + b}.", a + b)


def _sub(rng: random.Random, m: int, c: _Cast) -> Problem:
    a = rng.randint(1, m)
    b = rng.randint(1, a)
    q = f"{c.name} has {a} {c.item}. {c.pronoun} gives away {b}. How many {c.item} does {c.name} have left?"
    return Problem(("sub", a, b), q, f"{a} - {b} = {a - b}. The answer is {a - b}.", a - b)


def _add_sub(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b = rng.randint(1, m), rng.randint(1, m)
    d = rng.randint(1, min(m, a + b))
    s, r = a + b, a + b - d
    q = (
        f"{c.name} has {a} {c.item}. {c.pronoun} buys {b} more and gives away {d}. "
        f"How many {c.item} does {c.name} have now?"
    )
    return Problem(("add_sub", a, b, d), q, f"{a} + {b} = {s}. {s} - {d} = {r}. The answer is {r}.", r)


def _sub_add(rng: random.Random, m: int, c: _Cast) -> Problem:
    a = rng.randint(1, m)
    b, d = rng.randint(1, a), rng.randint(1, m)
    s, r = a - b, a - b + d
    q = (
        f"{c.name} has {a} {c.item}. {c.pronoun} loses {b} and then finds {d}. "
        f"How many {c.item} does {c.name} have now?"
    )
    return Problem(("sub_add", a, b, d), q, f"{a} - {b} = {s}. {s} + {d} = {r}. The answer is {r}.", r)


def _total(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b = rng.randint(1, m), rng.randint(1, m)
    q = f"{c.name} has {a} {c.item} and {c.other} has {b} {c.item}. How many {c.item} do they have in total?"
    return Problem(("total", a, b), q, f"{a} + {b} = {a + b}. The answer is {a + b}.", a + b)


def _difference(rng: random.Random, m: int, c: _Cast) -> Problem:
    a = rng.randint(2, m)
    b = rng.randint(1, a - 1)
    q = (
        f"{c.name} has {a} {c.item} and {c.other} has {b} {c.item}. "
        f"How many more {c.item} does {c.name} have than {c.other}?"
    )
    return Problem(("difference", a, b), q, f"{a} - {b} = {a - b}. The answer is {a - b}.", a - b)


def _multiply(rng: random.Random, m: int, c: _Cast) -> Problem:
    top = max(2, min(m, MAX_FACTOR))
    a, b = rng.randint(2, top), rng.randint(2, top)
    q = f"{c.name} has {a} bags with {b} {c.item} in each bag. How many {c.item} does {c.name} have?"
    return Problem(("multiply", a, b), q, f"{a} * {b} = {a * b}. The answer is {a * b}.", a * b)


TEMPLATES: list[Callable[[random.Random, int, _Cast], Problem]] = [
    _add, _sub, _add_sub, _sub_add, _total, _difference, _multiply,
]  # fmt: skip


def draw_problem(rng: random.Random, max_operand: int) -> Problem:
    """Draws one problem (any template) from ``rng``."""
    template = rng.choice(TEMPLATES)
    (name, pronoun), (other, _) = rng.sample(PEOPLE, 2)
    cast = _Cast(name, pronoun, other, rng.choice(ITEMS))
    return template(rng, max_operand, cast)


def generate_splits(sizes: dict[str, int], seed: int, max_operand: int) -> dict[str, list[Problem]]:
    """Generates disjoint splits of distinct problems (see the module docstring).

    Args:
        sizes: Problems per split, drawn in the dict's order (put held-out splits first).
        seed: Seed of the stream.
        max_operand: Largest operand of + and - (at least 2).

    Returns:
        The problems of each split.

    Raises:
        ValueError: If ``max_operand`` is too small, or there are not enough distinct problems for the
            requested sizes.
    """
    if max_operand < 2:
        raise ValueError(f"max_operand must be >= 2, got {max_operand}")
    rng = random.Random(seed)
    seen: set[tuple] = set()
    splits: dict[str, list[Problem]] = {}
    for split, size in sizes.items():
        problems: list[Problem] = []
        budget = 100 * size + 1000
        while len(problems) < size:
            budget -= 1
            if budget < 0:
                raise ValueError(
                    f"found only {len(seen)} distinct problems with max_operand={max_operand}; "
                    f"raise max_operand or ask for fewer than {sum(sizes.values())}"
                )
            problem = draw_problem(rng, max_operand)
            if problem.key not in seen:
                seen.add(problem.key)
                problems.append(problem)
        splits[split] = problems
    return splits
