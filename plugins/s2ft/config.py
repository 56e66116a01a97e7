"""What S²FT can train, how budgets are counted, and the paper's recipes.

Trainable roles
---------------
Each role is one projection of a decoder block and the unit it is selected by
(see :mod:`plugins.s2ft.structures` for the coupling):

======  ==========  ===========  ============================================
role    projection  unit         trainable slice of the weight ``[out, in]``
======  ==========  ===========  ============================================
``o``   o_proj      query head   columns ``[h·d, (h+1)·d)``
``v``   v_proj      kv head      rows ``[g·d, (g+1)·d)`` (and their bias)
``up``  up_proj     channel      row ``c`` (and its bias)
``gate`` gate_proj  channel      row ``c`` (and its bias)
``down`` down_proj  channel      column ``c``
======  ==========  ===========  ============================================

Q and K are never trained (they are co-permuted with their heads only).

Budgets
-------
A budget is a fraction of the units (a float in ``[0, 1]``) or a count (an int). With
``allocation="global"`` (the official code's scheme) the budget is taken over the units of
all chosen layers at once, so layers get different numbers; with ``"per_layer"`` every
layer gets the same number. A positive fraction selects at least one unit.

Paper recipes
-------------
From the official training scripts of Yang et al. (NeurIPS 2024),
``experiments/train_script/finetune_{commensense,math}_{llama2,llama3}_s2.sh``: batch 64
(4 GPUs × 16), 3 epochs, linear decay, 100 warm-up steps, weight decay 0, bf16, sequences
up to 2048, random selection drawn globally over all layers
(``int(ratio × units_per_layer × layers)`` units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Budget = int | float
"""A fraction of the units (float in [0, 1]) or a count of units (int)."""

StrategyName = Literal["random", "weight", "activation", "weight_activation", "gradient"]
Allocation = Literal["global", "per_layer"]


@dataclass(frozen=True)
class Role:
    """A trainable projection and the unit it is selected by."""

    name: str
    projection: str
    """Key of the projection in :class:`plugins.s2ft.structures.Layout`."""
    dim: int
    """0: the unit is a block of rows (output features); 1: of columns (input features)."""
    unit: Literal["query_head", "kv_head", "channel"]


ROLES: dict[str, Role] = {
    "o": Role("o", "o", dim=1, unit="query_head"),
    "v": Role("v", "v", dim=0, unit="kv_head"),
    "up": Role("up", "up", dim=0, unit="channel"),
    "gate": Role("gate", "gate", dim=0, unit="channel"),
    "down": Role("down", "down", dim=1, unit="channel"),
}

CONFIG_ARG = {"o": "o_heads", "v": "v_heads", "up": "up_channels", "gate": "gate_channels", "down": "down_channels"}
"""Role → the :class:`plugins.s2ft.S2FT` argument that holds its budget."""

PAPER_RECIPES: dict[str, dict[str, float]] = {
    # LLaMA-2-7B on commonsense-170k, lr 2e-4: O heads 5.2 % and down channels 2 % (of all layers).
    "llama2-commonsense": {"o_heads": 0.052, "down_channels": 0.02},
    # LLaMA-2-7B on math-10k: the same ratios, lr 1e-3.
    "llama2-math": {"o_heads": 0.052, "down_channels": 0.02},
    # LLaMA-3-8B on commonsense-170k (lr 2e-4) and math-10k (lr 1e-3): down channels 3 % only.
    "llama3-commonsense": {"o_heads": 0.0, "down_channels": 0.03},
    "llama3-math": {"o_heads": 0.0, "down_channels": 0.03},
}
"""The official scripts' ratios; ``S2FT()``'s defaults are ``llama2-commonsense``."""


def check_budget(name: str, budget: Budget) -> None:
    """Raise unless ``budget`` is a count ≥ 0 or a fraction in [0, 1].

    Raises:
        TypeError: neither an int nor a float.
        ValueError: negative, or a float above 1.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise TypeError(f"S2FT {name} must be a fraction (float in [0, 1]) or a count (int), got {budget!r}")
    if budget < 0:
        raise ValueError(f"S2FT {name}={budget!r} is negative; give a fraction in [0, 1] or a count of units ≥ 0")
    if isinstance(budget, float) and budget > 1:
        raise ValueError(
            f"S2FT {name}={budget!r}: a float is a fraction of the units and must lie in [0, 1]; "
            "give an int for a number of units"
        )


def resolve_count(budget: Budget, total: int, what: str) -> int:
    """Number of units to select out of ``total``.

    Args:
        budget: fraction (float) or count (int).
        total: units available.
        what: description for the error message (``"o_heads in layer 3"``).

    Raises:
        ValueError: a count larger than ``total``.
    """
    if isinstance(budget, int) and not isinstance(budget, bool):
        if budget > total:
            raise ValueError(f"S2FT {what}: asked for {budget} units, only {total} exist")
        return budget
    if budget <= 0:
        return 0
    return min(total, max(1, round(budget * total)))
