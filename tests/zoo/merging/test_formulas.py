"""Merge formulas against reference computations written out element by element."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft.utils import merge_utils

from zoo.merging import formulas
from zoo.merging.combine import MergeOptions, combine, overlap_report, parameter_generator


def task_vectors(n: int = 3, shape: tuple[int, ...] = (4, 5), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def by_magnitude(delta: torch.Tensor) -> list[int]:
    """Flat positions of the changed entries, largest magnitude first (ties by position)."""
    flat = delta.reshape(-1).tolist()
    changed = [i for i, v in enumerate(flat) if v != 0]
    return sorted(changed, key=lambda i: (-abs(flat[i]), i))


def keep_positions(delta: torch.Tensor, positions: list[int]) -> torch.Tensor:
    out = torch.zeros_like(delta).reshape(-1)
    out[positions] = delta.reshape(-1)[positions]
    return out.view(delta.shape)


def test_weighted_sum_and_task_arithmetic():
    d = task_vectors()
    w = [0.5, 2.0, -1.0]
    expected = 0.5 * d[0] + 2.0 * d[1] - d[2]
    torch.testing.assert_close(formulas.weighted_sum(d, w), expected)
    torch.testing.assert_close(formulas.task_arithmetic(d, w, scale=0.3), 0.3 * expected)


def test_average_over_all():
    d = task_vectors()
    w = [1.0, 2.0, 3.0]
    torch.testing.assert_close(formulas.average(d, w, over="all"), (d[0] + 2 * d[1] + 3 * d[2]) / 6)


def test_average_over_changed_keeps_disjoint_updates_whole_and_averages_overlaps():
    a = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    b = torch.tensor([[3.0, 5.0, 0.0, 0.0]])
    merged = formulas.average([a, b], [1.0, 3.0], over="changed")
    # entry 0: both changed → (1·1 + 3·3) / 4; entry 1: only b → 5; entry 2: only a → 2; entry 3: none → 0
    torch.testing.assert_close(merged, torch.tensor([[2.5, 5.0, 2.0, 0.0]]))


def test_average_refuses_non_positive_weights():
    with pytest.raises(ValueError, match="positive"):
        formulas.average(task_vectors(2), [1.0, 0.0])


def test_trim_keeps_the_largest_changed_entries():
    delta = torch.tensor([[0.0, -3.0, 1.0], [0.5, 0.0, 2.0]])
    # 4 changed entries; density 0.5 keeps the 2 largest: -3 and 2
    torch.testing.assert_close(formulas.trim(delta, 0.5), torch.tensor([[0.0, -3.0, 0.0], [0.0, 0.0, 2.0]]))
    d = task_vectors(1, (6, 7))[0]
    torch.testing.assert_close(formulas.trim(d, 0.3), keep_positions(d, by_magnitude(d)[: round(0.3 * 42)]))


def ties_reference(deltas, weights, density, scale):
    trimmed = [keep_positions(d, by_magnitude(d)[: round(density * int((d != 0).sum()))]) for d in deltas]
    out = torch.zeros_like(deltas[0]).reshape(-1)
    flat = [t.reshape(-1) for t in trimmed]
    for p in range(out.numel()):
        total = sum(t[p].item() for t in flat)
        sign = 1.0 if total >= 0 else -1.0
        agreeing = [
            (w, t[p].item()) for w, t in zip(weights, flat) if t[p].item() != 0 and (t[p].item() > 0) == (sign > 0)
        ]
        out[p] = sum(w * v for w, v in agreeing) / max(len(agreeing), 1)
    return scale * out.view(deltas[0].shape)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
def test_ties_matches_the_reference(density):
    d = task_vectors(3, (4, 5))
    w = [1.0, 0.7, 1.3]
    torch.testing.assert_close(formulas.ties(d, w, density, scale=0.9), ties_reference(d, w, density, 0.9))


def test_ties_matches_peft_on_dense_task_vectors():
    d = task_vectors(3, (4, 5))  # 20 entries, all changed: density·20 is an integer, as peft rounds down
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(formulas.ties(d, w, 0.4), merge_utils.ties(d, w, density=0.4))


def test_dare_drops_with_the_seeded_generator_and_rescales():
    d = task_vectors(2, (8, 8))
    w = [1.0, 0.5]
    density = 0.3
    g = torch.Generator().manual_seed(7)
    keeps = [torch.rand(t.shape, generator=g) < density for t in d]  # drawn in adapter order
    expected = sum(wi * t * k / density for wi, t, k in zip(w, d, keeps))
    merged = formulas.dare(d, w, density, torch.Generator().manual_seed(7))
    torch.testing.assert_close(merged, expected)
    again = formulas.dare(d, w, density, torch.Generator().manual_seed(7))
    assert torch.equal(merged, again)
    assert not torch.equal(merged, formulas.dare(d, w, density, torch.Generator().manual_seed(8)))


def test_dare_keeps_the_expected_value():
    delta = torch.ones(200, 200, dtype=torch.float64)
    dropped = formulas.dare_drop(delta, 0.25, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) <= {0.0, 4.0}  # kept entries rescaled by 1/(1-p) = 1/0.25
    assert abs(dropped.mean().item() - 1.0) < 0.05
    assert abs((dropped != 0).double().mean().item() - 0.25) < 0.01


def test_dare_ties_elects_signs_on_the_dropped_vectors():
    d = task_vectors(3, (5, 5))
    w = [1.0, 1.0, 2.0]
    g = torch.Generator().manual_seed(3)
    dropped = [formulas.dare_drop(t, 0.5, g) for t in d]
    expected = ties_reference(dropped, w, 1.0, 1.0)
    torch.testing.assert_close(formulas.dare(d, w, 0.5, torch.Generator().manual_seed(3), sign_election=True), expected)


@pytest.mark.parametrize(("density", "gamma"), [(0.5, 0.1), (0.2, 0.0), (0.9, 0.1), (0.0, 0.3)])
def test_breadcrumbs_masks_the_largest_and_the_smallest(density, gamma):
    d = task_vectors(2, (5, 4))
    w = [1.0, 0.5]
    expected = torch.zeros_like(d[0])
    for wi, t in zip(w, d):
        order = by_magnitude(t)
        top = round(gamma * len(order))
        expected += wi * keep_positions(t, order[top : top + round(density * len(order))])
    torch.testing.assert_close(formulas.breadcrumbs(d, w, density, gamma, scale=1.0), expected)


def test_breadcrumbs_counts_only_changed_entries():
    delta = torch.tensor([[0.0, 10.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.5]])  # 5 changed: 10 > 3 > 2 > 1 > 0.5
    mask = formulas.breadcrumbs_mask(delta, density=0.6, gamma=0.2)  # drop 10, keep 3, 2, 1, drop 0.5
    assert (delta * mask).tolist() == [[0.0, 0.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: formulas.trim(d[0], 1.5), "density"),
        (lambda d: formulas.breadcrumbs_mask(d[0], 0.8, 0.3), "at most 1"),
        (lambda d: formulas.weighted_sum(d, [1.0]), "one weight"),
    ],
)
def test_formulas_refuse_bad_settings(call, message):
    with pytest.raises(ValueError, match=message):
        call(task_vectors(2))


# ---------------------------------------------------------------- whole adapters


def test_combine_treats_a_missing_parameter_as_zero():
    a = {"x": torch.ones(2, 2), "y": torch.ones(3)}
    b = {"x": 3 * torch.ones(2, 2)}
    merged = combine([a, b], [1.0, 1.0], MergeOptions("average", average_over="all"))
    torch.testing.assert_close(merged["x"], 2 * torch.ones(2, 2))
    torch.testing.assert_close(merged["y"], 0.5 * torch.ones(3))
    merged = combine([a, b], [1.0, 1.0], MergeOptions("average"))  # over changed: y only from a
    torch.testing.assert_close(merged["y"], torch.ones(3))


def test_combine_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="different shapes"):
        combine([{"x": torch.ones(2, 2)}, {"x": torch.ones(2, 3)}], [1.0, 1.0], MergeOptions("sum"))


def test_dare_draws_depend_on_the_parameter_not_on_the_others():
    a = {"x": torch.ones(16, 16), "y": torch.ones(16, 16)}
    alone = combine([{"x": a["x"]}], [1.0], MergeOptions("dare", density=0.5, seed=1))
    both = combine([a], [1.0], MergeOptions("dare", density=0.5, seed=1))
    assert torch.equal(alone["x"], both["x"])
    assert not torch.equal(both["x"], both["y"])  # seeded per parameter name
    g = parameter_generator(1, "x")
    torch.testing.assert_close(alone["x"], formulas.dare_drop(a["x"], 0.5, g))


def test_merge_options_refuse_unknown_methods_and_bad_fractions():
    with pytest.raises(ValueError, match="unknown merge method"):
        MergeOptions("slerp")
    with pytest.raises(ValueError, match="density"):
        MergeOptions("ties", density=2.0)


def test_overlap_report_on_disjoint_and_overlapping_columns():
    def cols(*c):
        t = torch.zeros(3, 6)
        t[:, list(c)] = 1.0
        return {"w": t}

    report = overlap_report([cols(0, 1), cols(2, 3), cols(1, 2)], ["a", "b", "c"])
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert pairs["a", "b"]["disjoint"] and pairs["a", "b"]["shared_columns"] == 0
    assert pairs["a", "c"]["shared_columns"] == 1 and pairs["a", "c"]["shared_entries"] == 3
    assert pairs["a", "c"]["columns_jaccard"] == pytest.approx(1 / 3)
    assert report["changed"]["a"] == {"entries": 6, "columns": 2}
    assert len(list(itertools.combinations("abc", 2))) == len(report["pairs"])
