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


def test_all_templates_are_used(splits):
    assert {p.key[0] for p in splits["train"]} == {
        "add", "sub", "add_sub", "sub_add", "total", "difference", "multiply",
    }  # fmt: skip


def test_too_few_distinct_problems_is_an_error():
    with pytest.raises(ValueError, match="found only .* distinct problems with max_operand=2"):
        generate_splits({"train": 500}, seed=0, max_operand=2)
    with pytest.raises(ValueError, match="max_operand must be >= 2"):
        generate_splits({"train": 1}, seed=0, max_operand=1)
