"""Merging whole adapters: the formulas of :mod:`zoo.merging.formulas`, parameter by parameter.

Each adapter is a dict of dense task vectors (base parameter name → ``fused - base``). A
parameter that an adapter does not change counts as a zero task vector for it, so
adapters that touch different parameters (or disjoint S²FT selections) merge into their
union.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from zoo.merging import formulas

How = Literal["sum", "average", "task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs"]


@dataclass(frozen=True)
class MergeOptions:
    """How to merge (see the table in :mod:`zoo.merging.formulas`).

    The one set of options every merge takes: ``tools/merge.py`` builds it, and a method's
    ``ftzoo_merge_adapters`` receives it and must give the update that :func:`combine`
    computes from the adapters' dense deltas with the same options (the reference), or
    decline. The defaults here are the defaults of every method.
    """

    how: How = "average"
    density: float = 0.2
    """ties, dare, dare_ties, breadcrumbs: fraction of each task vector's changed entries kept."""
    gamma: float = 0.01
    """breadcrumbs: fraction of the largest changed entries masked away as outliers."""
    scale: float = 1.0
    """task_arithmetic, ties, dare, dare_ties, breadcrumbs: scaling coefficient λ of the merged update."""
    seed: int = 0
    """dare, dare_ties: seed of the random drop."""
    average_over: Literal["all", "changed"] = "changed"
    """average: divide by all weights, or per entry by the weights of the adapters that changed it."""

    def __post_init__(self) -> None:
        if self.how not in MERGERS:
            raise ValueError(f"unknown merge method {self.how!r}; choose one of {sorted(MERGERS)}")
        for name in ("density", "gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.how in TRIMMING and self.density == 0:
            raise ValueError(
                f"{self.how} with density 0 keeps none of any adapter's changes: the merge would be an empty adapter "
                "(the base model unchanged); give the fraction of changed entries to keep, in (0, 1] (e.g. 0.2)"
            )
        if self.how == "breadcrumbs" and self.density + self.gamma > 1:
            raise ValueError(f"breadcrumbs needs density + gamma <= 1, got {self.density} + {self.gamma}")
        if self.average_over not in ("all", "changed"):
            raise ValueError(f"average_over must be 'all' or 'changed', got {self.average_over!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TRIMMING = ("ties", "dare", "dare_ties", "breadcrumbs")
"""The merges that keep only a ``density`` fraction of each task vector's changes."""

Merger = Callable[[list[torch.Tensor], torch.Tensor, MergeOptions, torch.Generator], torch.Tensor]

MERGERS: dict[str, Merger] = {
    "sum": lambda d, w, o, g: formulas.weighted_sum(d, w),
    "average": lambda d, w, o, g: formulas.average(d, w, o.average_over),
    "task_arithmetic": lambda d, w, o, g: formulas.task_arithmetic(d, w, o.scale),
    "ties": lambda d, w, o, g: formulas.ties(d, w, o.density, o.scale),
    "dare": lambda d, w, o, g: formulas.dare(d, w, o.density, g, o.scale),
    "dare_ties": lambda d, w, o, g: formulas.dare(d, w, o.density, g, o.scale, sign_election=True),
    "breadcrumbs": lambda d, w, o, g: formulas.breadcrumbs(d, w, o.density, o.gamma, o.scale),
}


def parameter_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the parameter name, so a parameter's random
    drop does not depend on which other parameters are merged."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def combine(
    task_vectors: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], options: MergeOptions
) -> dict[str, torch.Tensor]:
    """Merge adapters given as dense task vectors.

    Args:
        task_vectors: one dict per adapter, base parameter name → task vector.
        weights: one weight per adapter.
        options: the merge method and its settings.

    Returns:
        Parameter name → merged update, in float32; parameters whose merged update is all
        zero are left out.

    Raises:
        ValueError: the adapters give one parameter different shapes, or the weights do
            not match the adapters.
    """
    if len(weights) != len(task_vectors):
        raise ValueError(f"{len(task_vectors)} adapters but {len(weights)} weights")
    merger = MERGERS[options.how]
    w = torch.tensor(list(weights), dtype=torch.float32)
    merged = {}
    for name in sorted(set().union(*task_vectors)):
        present = [tv[name] for tv in task_vectors if name in tv]
        shapes = {tuple(t.shape) for t in present}
        if len(shapes) > 1:
            raise ValueError(f"the adapters give {name} different shapes: {sorted(shapes)}")
        zero = torch.zeros_like(present[0], dtype=torch.float32)
        stacked = [tv[name].float() if name in tv else zero for tv in task_vectors]
        result = merger(stacked, w.to(zero.device), options, parameter_generator(options.seed, name))
        if bool(result.any()):
            merged[name] = result
    return merged


def overlap_report(task_vectors: Sequence[dict[str, torch.Tensor]], labels: Sequence[str]) -> dict[str, Any]:
    """How much the adapters' changes overlap, per pair.

    Entries count single weights; columns count input features of 2-D weights (what an
    S²FT selection of heads and channels changes in ``o_proj``/``down_proj``).

    Returns:
        ``{"changed": {label: {"entries", "columns"}}, "pairs": [{"a", "b", "shared_entries",
        "entries_jaccard", "shared_columns", "columns_jaccard", "disjoint"}]}``.
    """
    n = len(task_vectors)
    entries = [[0] * n for _ in range(n)]  # [i][j]: entries both i and j changed; [i][i]: i's own
    columns = [[0] * n for _ in range(n)]
    for name in sorted(set().union(*task_vectors)):
        masks = [tv[name] != 0 if name in tv else None for tv in task_vectors]
        col_masks = [m.reshape(m.shape[0], -1).any(0) if m is not None and m.dim() == 2 else None for m in masks]
        for i in range(n):
            for j in range(i, n):
                if masks[i] is not None and masks[j] is not None:
                    entries[i][j] += int((masks[i] & masks[j]).sum())
                if col_masks[i] is not None and col_masks[j] is not None:
                    columns[i][j] += int((col_masks[i] & col_masks[j]).sum())
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            union_e = entries[i][i] + entries[j][j] - entries[i][j]
            union_c = columns[i][i] + columns[j][j] - columns[i][j]
            pairs.append(
                {
                    "a": labels[i],
                    "b": labels[j],
                    "shared_entries": entries[i][j],
                    "entries_jaccard": entries[i][j] / union_e if union_e else 0.0,
                    "shared_columns": columns[i][j],
                    "columns_jaccard": columns[i][j] / union_c if union_c else 0.0,
                    "disjoint": entries[i][j] == 0,
                }
            )
    changed = {labels[i]: {"entries": entries[i][i], "columns": columns[i][i]} for i in range(n)}
    return {"changed": changed, "pairs": pairs}


def format_overlap(report: dict[str, Any]) -> str:
    """The overlap report as a small table."""
    lines = [f"{'a':<16} {'b':<16} {'shared entries':>15} {'jaccard':>8} {'shared cols':>12} {'jaccard':>8}"]
    for p in report["pairs"]:
        lines.append(
            f"{p['a']:<16} {p['b']:<16} {p['shared_entries']:>15,} {p['entries_jaccard']:>8.3f} "
            f"{p['shared_columns']:>12,} {p['columns_jaccard']:>8.3f}" + ("  (disjoint)" if p["disjoint"] else "")
        )
    return "\n".join(lines)
