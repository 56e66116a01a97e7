"""Where one product for all sparse adapters beats one per adapter: :class:`zoo.inference.mixed.SparsePlan`
batched against the same deltas one adapter at a time (its loop), at SmolLM2-135M's seven linear
shapes, per number of adapters, rows per adapter and tokens per row.

``python -m tools.bench.sparse_plan`` builds ``adapters`` random sparse deltas of ``density`` per
shape (the serving benchmarks' 1%), each adapter on ``rows`` rows of ``tokens`` tokens, and times
one call of each module's plan both ways, alternately, ``rounds`` times ``repeats`` calls; printed
per setting: the seven modules' median time both ways and batched / one by one. Decoding is one
token per row; prefill many. :data:`zoo.inference.mixed.SPARSE_BATCH_WIDTH` (rows times tokens per
adapter) is where the batched product stops paying on CPU.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable

import torch

from plugins.sparse.model import SparseDelta
from zoo.inference.mixed import Assignment, LoopPlan, SparsePlan, StackedSparse

SMOLLM2_SHAPES = ((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536))
"""``[out, in]`` of q, k, v, o, gate, up and down in each of SmolLM2-135M's blocks."""


def _plans(
    shape: tuple[int, int], adapters: int, rows: int, density: float, g: torch.Generator
) -> tuple[SparsePlan, LoopPlan]:
    """The plan of ``adapters`` random sparse deltas of one module, and its loop (rows interleaved)."""
    out, width = shape
    count = max(int(density * out * width), 1)
    deltas = []
    for _ in range(adapters):
        idx = torch.randperm(out * width, generator=g)[:count].sort().values
        deltas.append(SparseDelta(idx, 0.01 * torch.randn(count, generator=g), shape))
    names = [f"a{i}" for i in range(adapters)]
    assignment = Assignment([names[i % adapters] for i in range(adapters * rows)], torch.device("cpu"))
    loop = LoopPlan([(assignment.index(n), d) for n, d in zip(names, deltas)])
    return SparsePlan(tuple(names), StackedSparse([d.sparse() for d in deltas]), assignment, loop), loop


def _onto_copy(
    plan: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return plan(x, y.clone())  # the plans add in place


def _seconds(call: Callable[[], torch.Tensor], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def sparse_plan(
    adapters: tuple[int, ...] = (4, 16),
    rows: tuple[int, ...] = (1, 4, 16),
    tokens: tuple[int, ...] = (1, 8, 32, 64),
    density: float = 0.01,
    repeats: int = 20,
    rounds: int = 3,
    threads: int = 1,
    shapes: tuple[tuple[int, int], ...] = SMOLLM2_SHAPES,
) -> list[dict[str, float]]:
    """Measure (see the module docstring); return one row per setting, times in seconds per block."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    results = []
    for a, r, t in itertools.product(adapters, rows, tokens):
        batched, one_by_one = [], []
        for shape in shapes:
            plan, loop = _plans(shape, a, r, density, g)
            x = torch.randn(a * r, t, shape[1], generator=g)
            y = torch.randn(a * r, t, shape[0], generator=g)
            stacked = functools.partial(_onto_copy, plan.batched, x, y)
            alone = functools.partial(_onto_copy, loop, x, y)
            torch.testing.assert_close(stacked(), alone(), atol=1e-5, rtol=1e-4)  # the same change both ways
            batched.append([]), one_by_one.append([])
            for _ in range(rounds):
                batched[-1].append(_seconds(stacked, repeats))
                one_by_one[-1].append(_seconds(alone, repeats))
        row = {
            "adapters": a,
            "rows": r,
            "tokens": t,
            "batched": sum(map(statistics.median, batched)),
            "one_by_one": sum(map(statistics.median, one_by_one)),
        }
        row["ratio"] = row["batched"] / row["one_by_one"]
        print(
            f"{a:3d} adapters x {r:2d} rows x {t:3d} tokens: batched {row['batched'] * 1e6:8.0f} us, "
            f"one by one {row['one_by_one'] * 1e6:8.0f} us, ratio {row['ratio']:.2f}",
            flush=True,
        )
        results.append(row)
    return results


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(sparse_plan, as_positional=False)
