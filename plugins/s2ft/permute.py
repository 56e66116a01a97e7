"""Co-permutation: move the selected heads and channels of a block next to each other.

Permuting the units of a coupled structure on *both* sides leaves the block's function
unchanged, because the units are summed over in the second matrix::

    y = Σ_c  down[:, c] · act(gate[c] · x) · (up[c] · x)       any order of c gives the same y

So S²FT reorders the channels (and heads) until each trainable slice is one dense block:

    before (✓ = selected channel)           after (selected first, others fill the holes)
    up/gate rows:  0 1 2 3 4 5 6 7          up/gate rows:  2 5 0 3 4 1 6 7
                       ✓     ✓                             ✓ ✓
    down columns:  0 1 2 3 4 5 6 7          down columns:  2 5 0 3 4 1 6 7
                   └─ same order ─┘                        └┘ slice [:2] trains

``order[j]`` is the original unit now at position ``j``. Only the moved units are copied
(a transient copy of those rows or columns), never the whole weight.

Grouped-query attention
-----------------------
With ``n_q`` query heads and ``n_kv`` kv heads, query head ``h`` reads kv head
``h // r`` (``r = n_q / n_kv``, HF ``repeat_kv``). A permutation keeps the function only
if query head ``h`` still reads its own kv head afterwards, i.e. it is a permutation of
whole groups (moving K/V rows of a kv head with the Q rows/O columns of its ``r`` query
heads) composed with permutations inside each group::

    n_q = 6, n_kv = 3, r = 2         group:      g0      g1      g2
                                    query heads: q0 q1 | q2 q3 | q4 q5
                                    kv heads:     k0   |  k1   |  k2

V is selected by kv head (whole groups: always contiguous after moving groups). O is
selected by query head; a group with ``c`` of its ``r`` heads selected is *full* (c = r),
*partial* (0 < c < r) or *empty*. Inside a group the selected heads can go first (``s``)
or last (``e``); a contiguous run of selected O columns can therefore span at most
``[partial·e] full … full [partial·s]``::

    O = {q1, q2, q3, q4}:   g0 = partial, g1 = full, g2 = partial
    order:  q0 q1 | q2 q3 | q4 q5          one run: columns of q1 q2 q3 q4
               ✓  |  ✓  ✓ |  ✓
            (g0 selected-last, g1, g2 selected-first)

    O = {q0, q2, q4}:  three partial groups → runs ⌈3/2⌉ = 2
    order:  q1 q0 | q2 q3 | q5 q4          runs: [q0 q2] and [q4]
                ✓ |  ✓    |     ✓

Each run holds at most two partial groups, so with ``P`` partial groups no arrangement
has fewer than ``⌈P/2⌉`` runs; :func:`plan_attention` reaches that bound when only O (or
only V) trains, and is at most one run above it when both do (the V groups must stay
adjacent too). The trainable layer handles any number of runs
(:class:`plugins.s2ft.layers.S2FTLinear`); with multi-head attention (``r = 1``) every
selected group is full and O is always a single run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

CHANNEL_PATTERNS: tuple[frozenset[str], ...] = tuple(
    frozenset(p)
    for p in (("gate",), ("gate", "up"), ("up",), ("up", "down"), ("gate", "up", "down"), ("gate", "down"), ("down",))
)
"""Order of FFN channels by which of gate/up/down selected them. Up and down are always
contiguous; gate is too unless both up-only and gate-only-or-with-down channels exist
(then it takes two runs)."""


def place_front(front: Sequence[int], n: int) -> list[int]:
    """An order of ``n`` units that puts ``front`` first and moves as little as possible.

    Units of the front region that were not chosen take the places the chosen units left.

    Args:
        front: the units wanted at positions ``0, 1, …`` in that order.
        n: number of units.

    Returns:
        ``order`` with ``order[j]`` = the original unit at new position ``j``.
    """
    chosen = set(front)
    order = list(range(n))
    displaced = [u for u in range(len(front)) if u not in chosen]  # pushed out of the front
    vacated = [p for p in range(len(front), n) if p in chosen]  # left behind by chosen units
    order[: len(front)] = front
    for position, unit in zip(vacated, displaced, strict=True):
        order[position] = unit
    return order


def plan_channels(intermediate_size: int, selected: dict[str, Iterable[int]]) -> list[int]:
    """The FFN channel order for the selected channels of each role (gate/up/down)."""
    membership: dict[int, set[str]] = {}
    for role, units in selected.items():
        for unit in units:
            membership.setdefault(unit, set()).add(role)
    front = [u for pattern in CHANNEL_PATTERNS for u in sorted(membership) if membership[u] == pattern]
    return place_front(front, intermediate_size)


def plan_attention(
    num_heads: int, num_kv_heads: int, o_heads: Iterable[int], v_heads: Iterable[int]
) -> tuple[list[int], list[int]]:
    """Query-head and kv-head orders that make V one block and O as few runs as possible.

    Args:
        num_heads: query heads.
        num_kv_heads: kv heads (groups).
        o_heads: selected query heads (O columns).
        v_heads: selected kv heads (V rows).

    Returns:
        ``(head_order, kv_order)``; ``head_order[j]`` is the original query head at
        position ``j``, and its group is ``kv_order[j // r]``.
    """
    r = num_heads // num_kv_heads
    o_set, v_set = set(o_heads), set(v_heads)
    chosen = {g: [h for h in range(g * r, (g + 1) * r) if h in o_set] for g in range(num_kv_heads)}
    with_o = [g for g in range(num_kv_heads) if chosen[g]]
    seg_o = [g for g in with_o if g not in v_set]  # O, not V
    seg_ov = [g for g in with_o if g in v_set]  # O and V
    seg_v = [g for g in sorted(v_set) if not chosen[g]]  # V only
    if seg_o and seg_ov:
        chain = _chain(seg_o, chosen, r, "open_right") + _chain(seg_ov, chosen, r, "open_left")
    else:
        chain = _chain(seg_o or seg_ov, chosen, r, "alone")
    chain += [(g, "keep") for g in seg_v]
    kv_order = place_front([g for g, _ in chain], num_kv_heads)
    align = dict(chain)
    head_order = []
    for g in kv_order:
        heads = list(range(g * r, (g + 1) * r))
        picked = [h for h in heads if h in o_set]
        rest = [h for h in heads if h not in o_set]
        side = align.get(g, "keep")
        head_order += picked + rest if side == "start" else rest + picked if side == "end" else heads
    return head_order, kv_order


def _chain(groups: list[int], chosen: dict[int, list[int]], r: int, mode: str) -> list[tuple[int, str]]:
    """Arrange groups holding selected O heads into few runs (see the module docstring).

    ``mode``: ``"alone"`` (nothing on either side), ``"open_right"`` (a run should
    continue into the next segment), ``"open_left"`` (a run continues from the previous).
    """
    full = [(g, "keep") for g in groups if len(chosen[g]) == r]
    partial = [g for g in groups if len(chosen[g]) < r]

    def pairs(gs: list[int]) -> list[tuple[int, str]]:  # [e s] [e s] …: one run per pair
        return [(g, "end" if i % 2 == 0 else "start") for i, g in enumerate(gs)]

    odd = len(partial) % 2 == 1
    if mode == "open_right":
        return pairs(partial[:-1]) + [(partial[-1], "end")] + full if odd else pairs(partial) + full
    if mode == "open_left":
        return full + [(partial[0], "start")] + pairs(partial[1:]) if odd else full + pairs(partial)
    if not partial:
        return full
    if odd:  # … [e full… ]
        return pairs(partial[:-1]) + [(partial[-1], "end")] + full
    return pairs(partial[:-2]) + [(partial[-2], "end")] + full + [(partial[-1], "start")]  # … [e full… s]


def positions(order: Sequence[int], units: Iterable[int]) -> list[int]:
    """Sorted new positions of ``units`` under ``order``."""
    where = {unit: j for j, unit in enumerate(order)}
    return sorted(where[u] for u in units)


def runs(order: Sequence[int], units: Iterable[int], unit_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` element ranges that the selected units occupy after permuting."""
    spans: list[list[int]] = []
    for p in positions(order, units):
        if spans and spans[-1][1] == p:
            spans[-1][1] = p + 1
        else:
            spans.append([p, p + 1])
    return [(a * unit_size, b * unit_size) for a, b in spans]


def unit_index(units: Sequence[int], unit_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Element indices of whole units: ``[u·s, …, u·s + s - 1]`` for each ``u``, in order."""
    base = torch.as_tensor(list(units), dtype=torch.long, device=device).unsqueeze(1) * unit_size  # [n, 1]
    return (base + torch.arange(unit_size, device=device)).reshape(-1)  # [n·s]


@torch.no_grad()
def permute_(tensor: torch.Tensor, order: Sequence[int], dim: int, unit_size: int) -> None:
    """Permute ``tensor``'s units along ``dim`` in place: new unit ``j`` = old unit ``order[j]``.

    Only the units that move are read and written (a transient copy of those slices).
    """
    moved = [j for j, unit in enumerate(order) if unit != j]
    if not moved:
        return
    new = unit_index(moved, unit_size, tensor.device)
    old = unit_index([order[j] for j in moved], unit_size, tensor.device)
    tensor.index_copy_(dim, new, tensor.index_select(dim, old))  # [.., moved·s, ..] copied once
