"""What distributed strategies change about a model, undone where ftzoo needs the plain one.

FSDP keeps every parameter as a 1-D shard outside forward and backward, and its wrappers
(and activation checkpointing's, and ``torch.compile``'s) insert ``_fsdp_wrapped_module.``
and the like into parameter and module names, which methods match against (PEFT does).
Checkpoints and adapters use the plain names and whole tensors. DDP and DeepSpeed ZeRO-1/2
need none of this.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import nn

WRAPPER_NAMES = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
"""Wrapper modules that FSDP, activation checkpointing and torch.compile insert into names."""
WRAPPED_CHILD = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")
"""The attribute under which a wrapper holds its one child."""


def check_strategy(strategy: Any) -> None:
    """Refuse a strategy the base model cannot be loaded under, before it loads.

    Raises:
        ValueError: DeepSpeed ZeRO-3.
    """
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        raise ValueError(
            "DeepSpeed ZeRO-3 partitions parameters while the base model loads (deepspeed.zero.Init), which "
            "ftzoo's loader does not support; use ZeRO-2 or FSDP (docs/distributed.md) to shard the base"
        )


def unshare_parameters(model: nn.Module) -> int:
    """Give each trainable parameter that shares its storage with another parameter a contiguous
    copy of its own; return how many were copied.

    FSDP flattens every parameter of a unit into one buffer and assumes each is contiguous and
    alone in its storage; a trainable slice that is a view of a frozen weight (S²FT's in-place
    slice, :mod:`plugins.s2ft.layers`) fails there. A method that makes such views computes the
    same with a copy (the copy holds the trained values, the weight the values it had at the
    copy), so the module calls this before FSDP wraps the model.
    """
    owners: dict[int, list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.is_meta:
            owners.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    copied = 0
    for params in owners.values():
        for p in params:
            if len(params) > 1 and p.requires_grad:
                p.data = p.detach().clone(memory_format=torch.contiguous_format)
                copied += 1
    return copied


def unwrapped(name: str) -> str:
    """A parameter name as in the unwrapped model (without FSDP, checkpointing or compile wrappers)."""
    return WRAPPER_NAMES.sub("", name)


@contextmanager
def whole_parameters(strategy: Any, model: nn.Module) -> Iterator[None]:
    """Whole parameters on rank 0, under the plain model's module names, for the duration.

    Every rank must enter it (gathering is a collective); under other strategies than FSDP
    it does nothing.
    """
    if not isinstance(strategy, FSDPStrategy):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    offload = strategy.root_device.type != "cpu"  # gather unit by unit into host memory
    with (
        FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False, rank0_only=True, offload_to_cpu=offload),
        without_wrappers(model),
    ):
        yield


@contextmanager
def without_wrappers(model: nn.Module) -> Iterator[None]:
    """Put every wrapped module in its wrapper's place in the parent for the duration, then restore."""
    swapped = []
    for parent in [m for m in model.modules() if _wrapped_child(m) is None]:
        for name, child in list(parent.named_children()):
            inner = child
            while _wrapped_child(inner) is not None:
                inner = _wrapped_child(inner)
            if inner is not child:
                swapped.append((parent, name, child))
                parent._modules[name] = inner
    try:
        yield
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


def _wrapped_child(module: nn.Module) -> nn.Module | None:
    return next((module._modules[key] for key in WRAPPED_CHILD if key in module._modules), None)
