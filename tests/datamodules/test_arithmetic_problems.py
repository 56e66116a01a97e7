"""The arithmetic problem generator: reproducible, disjoint, and right."""

from __future__ import annotations

import operator
import re

import pytest

from datamodules.answers import LastNumber
from datamodules.arithmetic_problems import generate_splits

SIZES = {"test": 200, "val": 100, "train": 1500}


def solve(question: str) -> int:
    """Computes the answer from the wording alone, independently of the generator."""
    n = [int(x) for x in re.findall(r"\d+", question)]
    if "bags with" in question:
        return n[0] * n[1]
    if "How many more" in question:
        return n[0] - n[1]
    if "in total" in question:
        return n[0] + n[1]
    if "buys" in question:
        return n[0] + n[1] - n[2]
    if "loses" in question:
        return n[0] - n[1] + n[2]
    if "gets" in question:
        return n[0] + n[1]
    if "gives away" in question:
        return n[0] - n[1]
    raise AssertionError(f"unknown wording: {question}")


@pytest.fixture(scope="module")
def splits():
    return generate_splits(SIZES, seed=0, max_operand=50)


def test_sizes_and_reproducibility(splits):
    assert {k: len(v) for k, v in splits.items()} == SIZES
    assert generate_splits(SIZES, seed=0, max_operand=50) == splits
    assert generate_splits(SIZES, seed=1, max_operand=50)["test"] != splits["test"]


def test_splits_are_disjoint_even_up_to_rewording(splits):
    keys = {name: {p.key for p in problems} for name, problems in splits.items()}
    questions = {name: {p.question for p in problems} for name, problems in splits.items()}
    assert sum(len(k) for k in keys.values()) == sum(SIZES.values())  # no repeats anywhere
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not keys[a] & keys[b] and not questions[a] & questions[b]


def test_held_out_sets_do_not_depend_on_num_train(splits):
    other = generate_splits({"test": 200, "val": 100, "train": 10}, seed=0, max_operand=50)
    assert other["test"] == splits["test"] and other["val"] == splits["val"]


def test_every_answer_and_every_step_is_right(splits):
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for problem in (p for problems in splits.values() for p in problems):
        assert problem.answer == solve(problem.question) >= 0
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", problem.solution)
        assert steps and all(ops[op](int(a), int(b)) == int(c) for a, op, b, c in steps)
        assert problem.solution.endswith(f"The answer is {problem.answer}.")
        assert LastNumber().is_correct(problem.solution, str(problem.answer))
        assert max(int(x) for x in re.findall(r"\d+", problem.question)) <= 50


def solve_varied(question: str) -> int:
    """The answer of a ``varied`` problem from its wording alone (the basic wordings: :func:`solve`)."""
    n = [int(x) for x in re.findall(r"\d+", question)]
    if " on Monday" in question or re.search(r"on \w+day, \d+ on \w+day and", question):
        return n[0] + n[1] + n[2]
    if "equal groups" in question or "equally among" in question and "had" not in question:
        return n[0] // n[1]
    if "boxes of" in question:
        return n[0] // n[1]
    if "shared them equally" in question:
        return (n[0] + n[1]) // n[2]
    if "in each pack" in question or "in each box" in question:
        return n[0] * n[1] - n[2]
    if "costs" in question or "every hour" in question:
        return n[0] * n[1]
    if "at first" in question:
        return n[1] - n[0]
    if "has" in question and "left. How many" in question and "before" in question:
        return n[0] + n[1]
    colour = re.search(r"How many (\w+) ", question).group(1)
    if colour in ("red", "blue", "green", "yellow", "white"):  # the other colour's number takes no part
        if "takes out" in question or "sold" in question:
            return n[0] - n[2]
        return n[0] + n[2]
    return solve(question)


def test_varied_shapes_are_right_and_disjoint():
    sizes = {"test": 200, "val": 100, "train": 3000}
    splits = generate_splits(sizes, seed=0, max_operand=20, shapes="varied")
    assert splits["test"] != generate_splits(sizes, seed=0, max_operand=20)["test"]
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
    keys = [p.key for problems in splits.values() for p in problems]
    assert len(set(keys)) == len(keys) == sum(sizes.values())
    assert len({k[0] for k in keys}) == 16  # every template, basic and varied (two keys for unknown starts)
    for problem in (p for problems in splits.values() for p in problems):
        assert problem.answer == solve_varied(problem.question) >= 0, problem.question
        steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", problem.solution)
        assert steps and all(ops[op](int(a), int(b)) == int(c) for a, op, b, c in steps)
        assert all(int(a) % int(b) == 0 for a, op, b, _ in steps if op == "/")
        assert problem.solution.endswith(f"The answer is {problem.answer}.")
    with pytest.raises(ValueError, match="unknown problem shapes 'odd'"):
        generate_splits(sizes, seed=0, max_operand=20, shapes="odd")


def test_all_templates_are_used(splits):
    assert {p.key[0] for p in splits["train"]} == {
        "add", "sub", "add_sub", "sub_add", "total", "difference", "multiply",
    }  # fmt: skip


def test_too_few_distinct_problems_is_an_error():
    with pytest.raises(ValueError, match="found only .* distinct problems with max_operand=2"):
        generate_splits({"train": 500}, seed=0, max_operand=2)
    with pytest.raises(ValueError, match="max_operand must be >= 2"):
        generate_splits({"train": 1}, seed=0, max_operand=1)
