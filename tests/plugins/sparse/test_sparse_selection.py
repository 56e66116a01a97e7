"""Mask strategies: how many entries, which ones, and that choosing changes nothing."""

from __future__ import annotations

import pytest
import torch
from method_harness import base_model, batches

from plugins.sparse.selection import STRATEGIES, GradientMagnitudeMask, RandomMask, WeightMagnitudeMask

TARGETS = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


def choose(strategy, density=0.1, seed=0, model=None, data=None):
    model = model or base_model()
    data = data if data is not None else batches(count=2)
    return strategy.choose(model, TARGETS, density, lambda: iter(data), seed)


def test_registry():
    assert set(STRATEGIES) == {"random", "weight", "gradient"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_counts_sorted_unique(name):
    chosen = choose(STRATEGIES[name]())
    model = base_model()
    for target, idx in chosen.items():
        numel = model.get_submodule(target).weight.numel()
        assert len(idx) == round(0.1 * numel) and torch.equal(idx, idx.unique(sorted=True)) and idx.max() < numel


def test_random_depends_on_seed_and_layer_only():
    a, b, c = choose(RandomMask(), seed=1), choose(RandomMask(), seed=1), choose(RandomMask(), seed=2)
    assert all(torch.equal(a[t], b[t]) for t in TARGETS)
    assert not torch.equal(a[TARGETS[0]], c[TARGETS[0]])


def test_weight_magnitude_takes_the_largest_entries():
    model = base_model()
    chosen = choose(WeightMagnitudeMask(), model=model)
    w = model.get_submodule(TARGETS[0]).weight.abs().flatten()
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[chosen[TARGETS[0]]] = True
    assert w[mask].min() >= w[~mask].max()


def test_gradient_magnitude_accumulates_abs_grads_and_changes_nothing():
    model, data = base_model(), batches(count=2)
    before = {n: p.clone() for n, p in model.named_parameters()}
    chosen = choose(GradientMagnitudeMask(), model=model, data=data)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    weight = model.get_submodule(TARGETS[1]).weight  # the reference, by hand
    score = torch.zeros_like(weight)
    weight.requires_grad_(True)
    for batch in data:
        (grad,) = torch.autograd.grad(model(**batch).loss, weight)
        score += grad.abs()
    weight.requires_grad_(False)
    expected = score.flatten().topk(len(chosen[TARGETS[1]])).indices.sort().values
    assert torch.equal(chosen[TARGETS[1]], expected)


def test_gradient_needs_batches():
    with pytest.raises(ValueError, match="calibration batches"):
        choose(GradientMagnitudeMask(), data=[])
