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

# ----- the "varied" shapes: closer to real word problems (AddSub, SingleEq, MultiArith) -------------------
# Numbers that do not take part (a second colour), three addends, division, two-step problems that mix
# * or / with + or -, unknown starting amounts, and several wordings of each. Wording, names, colours and
# objects are decoration: the key is still the template and the operands that are used.

COLOURS = ["red", "blue", "green", "yellow", "white"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
GATHERED = {"picked": "pick", "collected": "collect", "found": "find"}  # past tense: the question's form


def _say(rng: random.Random, *wordings: str) -> str:
    return rng.choice(wordings)


def _distractor_add(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b, x = rng.randint(1, m), rng.randint(1, m), rng.randint(1, m)
    one, two = rng.sample(COLOURS, 2)
    got = _say(rng, f"{c.pronoun} gets {b} more {one} {c.item}.", f"{c.other} gives {c.name} {b} {one} {c.item}.",
               f"Then {c.pronoun.lower()} buys {b} {one} {c.item}.")  # fmt: skip
    q = (f"{c.name} has {a} {one} {c.item} and {x} {two} {c.item}. {got} "
         f"How many {one} {c.item} does {c.name} have now?")  # fmt: skip
    return Problem(("distractor_add", a, b), q, f"{a} + {b} = {a + b}. The answer is {a + b}.", a + b)


def _distractor_sub(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, x = rng.randint(2, m), rng.randint(1, m)
    b = rng.randint(1, a - 1)
    one, two = rng.sample(COLOURS, 2)
    q = _say(rng, f"There are {a} {one} {c.item} and {x} {two} {c.item} in a box. {c.name} takes out {b} {one} {c.item}. "
                  f"How many {one} {c.item} are left in the box?",
             f"A shop had {a} {one} {c.item} and {x} {two} {c.item}. It sold {b} {one} {c.item}. "
             f"How many {one} {c.item} does the shop have left?")  # fmt: skip
    return Problem(("distractor_sub", a, b), q, f"{a} - {b} = {a - b}. The answer is {a - b}.", a - b)


def _three_days(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b, d = (rng.randint(1, m) for _ in range(3))
    days = rng.sample(DAYS, 3)
    verb = rng.choice(list(GATHERED))
    end = _say(rng, "in all", "altogether", "in total")
    q = (f"{c.name} {verb} {a} {c.item} on {days[0]}, {b} on {days[1]} and {d} on {days[2]}. "
         f"How many {c.item} did {c.name} {GATHERED[verb]} {end}?")  # fmt: skip
    s = a + b
    return Problem(("three_days", a, b, d), q, f"{a} + {b} = {s}. {s} + {d} = {s + d}. The answer is {s + d}.", s + d)


def _divide(rng: random.Random, m: int, c: _Cast) -> Problem:
    top = max(2, min(m, MAX_FACTOR))
    each, groups = rng.randint(2, top), rng.randint(2, top)
    n = each * groups
    if rng.random() < 0.5:  # how many in each group
        q = _say(rng, f"{c.name} has {n} {c.item} and puts them into {groups} equal groups. How many {c.item} are in each group?",
                 f"{c.name} shares {n} {c.item} equally among {groups} friends. How many {c.item} does each friend get?")  # fmt: skip
        divisor, answer = groups, each
    else:  # how many groups
        q = f"{c.name} packs {n} {c.item} into boxes of {each}. How many boxes does {c.name} fill?"
        divisor, answer = each, groups
    return Problem(("divide", n, divisor), q, f"{n} / {divisor} = {answer}. The answer is {answer}.", answer)


def _multiply_sub(rng: random.Random, m: int, c: _Cast) -> Problem:
    top = max(2, min(m, MAX_FACTOR))
    a, b = rng.randint(2, top), rng.randint(2, top)
    p = a * b
    d = rng.randint(1, p - 1)
    q = _say(rng, f"{c.name} bought {a} packs of {c.item} with {b} {c.item} in each pack. {c.pronoun} gave away {d} {c.item}. "
                  f"How many {c.item} does {c.name} have left?",
             f"{c.name} has {a} boxes with {b} {c.item} in each box. {c.pronoun} uses {d} of them. "
             f"How many {c.item} are left?")  # fmt: skip
    return Problem(("multiply_sub", a, b, d), q, f"{a} * {b} = {p}. {p} - {d} = {p - d}. The answer is {p - d}.", p - d)


def _add_divide(rng: random.Random, m: int, c: _Cast) -> Problem:
    top = max(2, min(m, MAX_FACTOR))
    share, friends = rng.randint(2, top), rng.randint(2, top)
    total = share * friends
    a = rng.randint(1, total - 1)
    b = total - a
    q = (f"{c.name} had {a} {c.item} and {c.other} gave {c.name} {b} more. "
         f"{c.pronoun} shared them equally among {friends} friends. How many {c.item} did each friend get?")  # fmt: skip
    solution = f"{a} + {b} = {total}. {total} / {friends} = {share}. The answer is {share}."
    return Problem(("add_divide", a, b, friends), q, solution, share)


def _price(rng: random.Random, m: int, c: _Cast) -> Problem:
    top = max(2, min(m, MAX_FACTOR))
    count, cost = rng.randint(2, top), rng.randint(2, top)
    q = _say(rng, f"A pack of {c.item} costs {cost} dollars. {c.name} buys {count} packs. How many dollars does {c.name} spend?",
             f"{c.name} earns {cost} dollars for every hour of work. How many dollars does {c.name} earn in {count} hours?")  # fmt: skip
    return Problem(("price", count, cost), q, f"{count} * {cost} = {count * cost}. The answer is {count * cost}.",
                   count * cost)  # fmt: skip


def _start_unknown(rng: random.Random, m: int, c: _Cast) -> Problem:
    a, b = rng.randint(1, m), rng.randint(1, m)
    q = _say(rng, f"{c.name} had some {c.item}. {c.pronoun} got {b} more and now has {a + b}. "
                  f"How many {c.item} did {c.name} have at first?",
             f"{c.name} gave {b} {c.item} to {c.other} and has {a} left. How many {c.item} did {c.name} have before?")  # fmt: skip
    if "left" in q:
        return Problem(("start_before", a, b), q, f"{a} + {b} = {a + b}. The answer is {a + b}.", a + b)
    return Problem(("start_unknown", a, b), q, f"{a + b} - {b} = {a}. The answer is {a}.", a)


VARIED_TEMPLATES: list[Callable[[random.Random, int, _Cast], Problem]] = TEMPLATES + [
    _distractor_add, _distractor_sub, _three_days, _divide, _multiply_sub, _add_divide, _price, _start_unknown,
]  # fmt: skip
SHAPES = {"basic": TEMPLATES, "varied": VARIED_TEMPLATES}


def draw_problem(rng: random.Random, max_operand: int, shapes: str = "basic") -> Problem:
    """Draws one problem (any template of ``shapes``: ``basic`` or ``varied``) from ``rng``."""
    template = rng.choice(SHAPES[shapes])
    (name, pronoun), (other, _) = rng.sample(PEOPLE, 2)
    cast = _Cast(name, pronoun, other, rng.choice(ITEMS))
    return template(rng, max_operand, cast)


def generate_splits(sizes: dict[str, int], seed: int, max_operand: int, shapes: str = "basic") -> dict[str, list[Problem]]:
    """Generates disjoint splits of distinct problems (see the module docstring).

    Args:
        sizes: Problems per split, drawn in the dict's order (put held-out splits first).
        seed: Seed of the stream.
        max_operand: Largest operand of + and - (at least 2).
        shapes: ``basic`` (the seven one- and two-step templates) or ``varied`` (those and eight more:
            distractor numbers, three addends, division, mixed two-step problems, unknown starts).

    Returns:
        The problems of each split.

    Raises:
        ValueError: If ``max_operand`` is too small, or there are not enough distinct problems for the
            requested sizes.
    """
    if max_operand < 2:
        raise ValueError(f"max_operand must be >= 2, got {max_operand}")
    if shapes not in SHAPES:
        raise ValueError(f"unknown problem shapes {shapes!r}; choose one of {sorted(SHAPES)}")
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
            problem = draw_problem(rng, max_operand, shapes)
            if problem.key not in seen:
                seen.add(problem.key)
                problems.append(problem)
        splits[split] = problems
    return splits
