"""Merge formulas on task vectors: pure functions of tensors, one parameter at a time.

A *task vector* ``δ_i`` is one adapter's dense update of one base parameter
(``fused - base``, see ``ftzoo_adapter_deltas``). Each function takes the task vectors of
``n`` adapters (same shape) and their weights ``w_i`` and returns the merged update. The
merged model is ``θ_0 + merged``.

Fractions (``density``, ``gamma``) count the *changed* entries of a task vector (its
nonzeros), not all of them: a structured sparse update (S²FT's columns, a sparse mask)
is then trimmed in proportion to what it changed, and a dense update (LoRA, full) is
trimmed exactly as in the papers, where every entry changes.

==================  ==========================================================  ===============================
``how``             merged update                                               reference
==================  ==========================================================  ===============================
``sum``             ``Σ w_i δ_i``
``average``         ``Σ w_i δ_i / Σ w_i`` (``over="all"``), or per entry over   model soups
                    the adapters that changed it (``over="changed"``)
``task_arithmetic`` ``λ Σ w_i δ_i``                                             Ilharco et al. 2023, §2
``ties``            trim to the top ``density`` by magnitude, elect the sign    Yadav et al. 2023 (TIES), §3
                    of ``Σ trimmed``, mean of the agreeing weighted values, ×λ
``dare``            drop each entry with probability ``p = 1 - density``,       Yu et al. 2024 (DARE), §3
                    rescale the kept by ``1/(1-p)``, then ``λ Σ w_i δ_i``
``dare_ties``       DARE's drop and rescale, then TIES' sign election
``breadcrumbs``     per tensor drop the ``gamma`` largest and keep the next     Davari & Belilovsky 2023, §3
                    ``density`` by magnitude (the smallest are dropped),
                    then ``λ Σ w_i δ_i``
==================  ==========================================================  ===============================

TIES and DARE follow ``peft/utils/merge_utils.py`` (sign election on the unweighted
trimmed vectors, with ties to ``+``; disjoint mean divided by the number of agreeing
adapters, not their weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Weights = Sequence[float] | torch.Tensor


def _stack(deltas: Sequence[torch.Tensor], weights: Weights) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, *shape] task vectors, [n, 1, ..., 1] weights)`` ready to broadcast."""
    stacked = torch.stack(list(deltas))
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    if w.shape != (len(deltas),):
        raise ValueError(f"need one weight per task vector: {len(deltas)} task vectors, weights {list(w.shape)}")
    return stacked, w.view(-1, *([1] * (stacked.dim() - 1)))


def weighted_sum(deltas: Sequence[torch.Tensor], weights: Weights) -> torch.Tensor:
    """``Σ w_i δ_i``."""
    stacked, w = _stack(deltas, weights)
    return (stacked * w).sum(0)


def average(
    deltas: Sequence[torch.Tensor], weights: Weights, over: Literal["all", "changed"] = "changed"
) -> torch.Tensor:
    """Weighted mean of the task vectors.

    Args:
        deltas: the task vectors.
        weights: positive weights.
        over: ``"all"`` divides by ``Σ w_i``. ``"changed"`` divides each entry by the
            weights of the adapters that changed it, so an update no other adapter touches
            is kept whole (disjoint S²FT selections merge into their union) and overlapping
            updates are averaged.
    """
    stacked, w = _stack(deltas, weights)
    if bool((w <= 0).any()):
        raise ValueError("average needs positive weights")
    total = (stacked * w).sum(0)
    if over == "all":
        return total / w.sum()
    support = ((stacked != 0) * w).sum(0)  # Σ of the weights of the adapters that changed each entry
    return total / support.clamp_min(torch.finfo(total.dtype).tiny)


def task_arithmetic(deltas: Sequence[torch.Tensor], weights: Weights, scale: float = 1.0) -> torch.Tensor:
    """``λ Σ w_i δ_i`` (task arithmetic with scaling coefficient ``λ = scale``)."""
    return scale * weighted_sum(deltas, weights)


def _ranks(delta: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rank of every entry by decreasing magnitude (0 = largest) and the number changed.

    Unchanged entries rank last. Ties are broken by position (stable sort), so masks are
    deterministic.
    """
    flat = delta.reshape(-1).abs()
    order = torch.argsort(flat, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel(), device=flat.device)
    return ranks.view(delta.shape), int((flat != 0).sum())


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density × changed)`` entries of largest magnitude; zero the rest."""
    _check_fraction("density", density)
    ranks, changed = _ranks(delta)
    return delta * (ranks < round(density * changed))


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """TIES sign election: ``[n, *shape]`` mask of the entries that agree with the sign of
    the sum over adapters (a zero sum elects ``+``; zero entries never agree)."""
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
    return stacked.sign() == elected


def disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """Mean over the adapters that agree, per entry (``Σ agree·w_i δ_i / #agree``)."""
    return (weighted * agree).sum(0) / agree.sum(0).clamp_min(1)


def ties(deltas: Sequence[torch.Tensor], weights: Weights, density: float, scale: float = 1.0) -> torch.Tensor:
    """TIES-merging: trim, elect sign, disjoint merge, times ``scale``."""
    trimmed, w = _stack([trim(d, density) for d in deltas], weights)
    return scale * disjoint_mean(trimmed * w, elect_sign(trimmed))


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``p = 1 - density``; rescale the kept by ``1/(1-p)``.

    The mask is drawn on the CPU from ``generator`` so that a seed gives the same merge on
    any device.
    """
    _check_fraction("density", density)
    if density == 0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator) < density  # Bernoulli(1-p), [*shape]
    return delta * keep.to(delta.device) / density


def dare(
    deltas: Sequence[torch.Tensor],
    weights: Weights,
    density: float,
    generator: torch.Generator,
    scale: float = 1.0,
    sign_election: bool = False,
) -> torch.Tensor:
    """DARE: drop and rescale each task vector (in order, from ``generator``), then sum
    (or, with ``sign_election``, merge as TIES does), times ``scale``."""
    dropped, w = _stack([dare_drop(d, density, generator) for d in deltas], weights)
    if sign_election:
        return scale * disjoint_mean(dropped * w, elect_sign(dropped))
    return scale * (dropped * w).sum(0)


def breadcrumbs_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs mask of one tensor (the paper masks per layer).

    Of the ``n`` changed entries sorted by decreasing magnitude, the first
    ``round(gamma·n)`` (outliers) and everything after the next ``round(density·n)``
    (negligible changes) are masked away.
    """
    _check_fraction("density", density)
    _check_fraction("gamma", gamma)
    if density + gamma > 1:
        raise ValueError(f"density + gamma must be at most 1, got {density} + {gamma}")
    ranks, changed = _ranks(delta)
    top = round(gamma * changed)
    return (ranks >= top) & (ranks < top + round(density * changed))


def breadcrumbs(
    deltas: Sequence[torch.Tensor], weights: Weights, density: float, gamma: float, scale: float = 1.0
) -> torch.Tensor:
    """Model Breadcrumbs: ``λ Σ w_i (m_i ⊙ δ_i)`` with :func:`breadcrumbs_mask` ``m_i``."""
    masked = [d * breadcrumbs_mask(d, density, gamma) for d in deltas]
    return scale * weighted_sum(masked, weights)
