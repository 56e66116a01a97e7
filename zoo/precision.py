"""Whether bf16 is fast on this machine's CPU, measured rather than assumed.

bf16 autocast (``--trainer.precision bf16-mixed``) and bf16 weights make a CPU's matmuls about 3×
faster where the CPU has native bf16 instructions (AVX512-BF16, AMX) and tens of times slower
where it has not: on an AVX2-only AMD EPYC (2026-12-07) a ``[512, 576] @ [576, 1536]`` matmul ran at
66 GFLOP/s in float32 and 1.2 in bf16, so a 6-minute fit took hours. The flags do not tell the two
apart reliably (``torch.backends.cpu.get_cpu_capability()`` says ``AVX512`` for CPUs with and
without bf16), so :func:`bf16_slowdown` times one small matmul in each dtype, once per process.
"""

from __future__ import annotations

import functools
import time
from itertools import pairwise
from pathlib import Path

import torch
import yaml

SLOW_BF16 = 2.0
"""bf16 matmuls this many times slower than float32 make bf16 a mistake on this CPU."""


@functools.cache
def bf16_slowdown() -> float:
    """Time of a bf16 matmul over a float32 one on this CPU (best of 5 each, about 0.2 s in all
    where bf16 is emulated; a few ms where it is native).

    One torch thread: with several, a matmul this small waits at each barrier for a thread that
    another process has taken the core from, and a busy machine read 2x where a quiet one read 57x."""
    a, b = torch.randn(64, 512), torch.randn(512, 512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {}
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            x @ y  # warm up
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                x @ y
                best = min(best, time.perf_counter() - start)
            times[dtype] = best
    finally:
        torch.set_num_threads(threads)
    return times[torch.bfloat16] / max(times[torch.float32], 1e-9)


def slow_bf16_advice(precision: str | None, device: torch.device | str = "cpu") -> str | None:
    """What to tell a user who asked for ``precision`` (Lightning's, e.g. ``bf16-mixed``, or a dtype
    name) on ``device``, where bf16 is slow there; ``None`` where it is fine."""
    if precision is None or "bf16" not in precision and "bfloat16" not in precision:
        return None
    if torch.device(device).type != "cpu":
        return None
    slowdown = bf16_slowdown()
    if slowdown < SLOW_BF16:
        return None
    return (
        f"bf16 matmuls run {slowdown:.0f}x slower than float32 on this CPU (it has no native bf16, such as "
        f"AVX512-BF16 or AMX), so precision {precision!r} makes this run far slower, not faster: use "
        "--trainer.precision 32-true (and float32 weights)"
    )


def recipe_precision(recipe: str, args: list[str] | None = None) -> str | None:
    """The trainer's precision of a ``lightning fit`` recipe run with ``args``: the last
    ``--trainer.precision`` among them, else the recipe's ``trainer.precision``."""
    given = [b for a, b in pairwise(args or []) if a == "--trainer.precision"]
    if given:
        return given[-1]
    precision = ((yaml.safe_load(Path(recipe).read_text()) or {}).get("trainer") or {}).get("precision")
    return None if precision is None else str(precision)
