"""Measuring one training step: bytes it holds (counted exactly) and seconds it takes.

See :mod:`tools.bench.train` for how the counts are read; both work on any model and any
list of trainable parameters, so every method row is measured the same way.
"""

from __future__ import annotations

import itertools
import statistics
import time
import weakref
from typing import Any, Self

import torch
from torch import nn

from zoo.quantization import state_tensors


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (``_cdata`` also tells ``meta`` storages apart)."""
    return t.untyped_storage()._cdata


def nbytes(tensors: Any) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen = {storage_key(t): t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor)}
    return sum(seen.values())


class SavedForBackward:
    """Inside ``with``: records the tensors autograd saves for backward. :meth:`nbytes` then
    counts the distinct storages that are *still* saved, ``skip`` (weights) left out.

    A tensor saved by a part of the graph that the forward pass itself drops (a norm computed
    with autograd and then detached, as peft's DoRA does) is freed again at once: it is no
    memory at backward time. Two things made such tensors count before: a pack hook that
    returns the tensor itself ties an op's saved *output* to its own node (a reference cycle
    that not even ``gc`` frees, so the dropped branch stayed alive only because it was being
    measured), and counts keyed by storage address saw addresses reused. The hook stores a
    detached view (same storage, no ``grad_fn``) and keeps only a weak reference to it, so
    what is counted is what the graph holds when the forward pass returns.
    """

    def __init__(self, skip: set[int] | None = None) -> None:
        self.skip = skip or set()
        self.saved: list[weakref.ref] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        packed = t.detach()
        self.saved.append(weakref.ref(packed))
        return packed

    def __enter__(self) -> Self:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def nbytes(self) -> int:
        alive = (ref() for ref in self.saved)
        return nbytes(t for t in alive if t is not None and storage_key(t) not in self.skip)


def adamw(trainable: list[nn.Parameter], **options: Any) -> torch.optim.AdamW:
    """AdamW, fused on a GPU: the foreach kernels' temporaries (a copy of a moment per step)
    would add up to a full model's size to full fine-tuning's peak; the state is the same."""
    fused = bool(trainable) and all(p.device.type == "cuda" for p in trainable)
    return torch.optim.AdamW(trainable, lr=1e-5, fused=fused or None, **options)


def count_memory(model: nn.Module, trainable: list[nn.Parameter], batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of weights, gradients, AdamW state and saved activations of one training step."""
    state = list(model.parameters()) + list(model.buffers()) + state_tensors(model)  # + NF4/int8 scales
    optimizer = adamw(trainable)
    with SavedForBackward(skip={storage_key(t) for t in state}) as saved:
        loss = model(**batch).loss
    activations = saved.nbytes()
    loss.backward()
    grads = nbytes(p.grad for p in trainable)
    optimizer.step()
    optim = nbytes(v for s in optimizer.state.values() for v in s.values())
    memory = {"weights": nbytes(state), "gradients": grads, "optimizer": optim, "activations": activations}
    memory["total"] = sum(memory.values())
    return memory


def cuda_peak(model: nn.Module, trainable: list[nn.Parameter], batch: dict[str, torch.Tensor]) -> int | None:
    """``torch.cuda.max_memory_allocated`` over two real steps (the second has optimizer state);
    ``None`` if the step does not fit on the GPU."""
    for p in trainable:
        p.grad = None
    optimizer = adamw(trainable)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(2):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError:
        return None
    finally:
        del optimizer
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


class StepTimer:
    """One method's model, optimizer and per-phase durations (forward, backward, AdamW step)."""

    PHASES = ("forward", "backward", "optimizer")

    def __init__(self, model: nn.Module, trainable: list[nn.Parameter], device: str) -> None:
        self.model, self.device = model, device
        self.optimizer = adamw(trainable, weight_decay=0.01)
        self.clock = _cuda_clock if device == "cuda" else _cpu_clock
        self.durations: dict[str, list[float]] = {name: [] for name in (*self.PHASES, "step")}

    def step(self, batch: dict[str, torch.Tensor], record: bool) -> None:
        marks = [self.clock()]
        loss = self.model(**batch).loss
        marks.append(self.clock())
        loss.backward()
        marks.append(self.clock())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(self.clock())
        if record:
            seconds = _elapsed(marks, self.device)
            for name, value in zip(self.PHASES, seconds):
                self.durations[name].append(value)
            self.durations["step"].append(sum(seconds))

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.durations.items()} | {
            "step_min": min(self.durations["step"]),
            "steps": self.durations["step"],
        }


def _cpu_clock() -> float:
    return time.perf_counter()


def _cuda_clock() -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed(marks: list, device: str) -> list[float]:
    if device == "cuda":
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in itertools.pairwise(marks)]
    return [b - a for a, b in itertools.pairwise(marks)]
