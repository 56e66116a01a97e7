"""Helpers shared by the S²FT tests: tiny models, batches and a select-and-rewrite shortcut.

Under ``--import-mode=importlib`` a test folder is not importable, so the helpers reach the
tests through the ``s2`` fixture (``s2.rewritten(...)``, ``s2.make_batch(...)``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch import nn

from plugins.s2ft import S2FT
from plugins.s2ft.layers import S2FTLinear
from plugins.s2ft.permute import unit_index

VOCAB = 260


def make_batch(seed: int = 0, batch: int = 2, seq: int = 12, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random token ids, a full attention mask and labels = inputs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def calibration(*batches: dict[str, torch.Tensor]):
    """A ``calibration_batches`` callable over the given batches."""

    def batches_() -> Iterator[dict[str, torch.Tensor]]:
        yield from batches

    return batches_


@dataclass
class Rewritten:
    base: nn.Module
    model: nn.Module
    method: S2FT
    selection: dict[str, Any]


def rewritten(
    arch: str = "llama-gqa",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    shape: dict[str, Any] | None = None,
    **config: Any,
) -> Rewritten:
    """A tiny base (``shape`` overrides its config), and a copy selected and rewritten by ``S2FT(**config)``."""
    base = tiny_model(arch, dtype=dtype, **(shape or {}))
    model = copy.deepcopy(base).requires_grad_(False)  # as the core loads it: every parameter frozen
    method = S2FT(**config)
    selection = method.ftzoo_select_parameters(model=model, calibration_batches=calibration(make_batch(99)), seed=seed)
    method.ftzoo_rewrite_model(model=model, selection=selection)
    return Rewritten(base, model, method, selection)


def s2ft_layers(model: nn.Module) -> dict[str, S2FTLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, S2FTLinear)}


def base_coordinates(layer: S2FTLinear, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tensor`` (slice-shaped, slot order) reordered to ascending original units, and those
    units' element indices in the base weight."""
    by_unit = sorted(range(len(layer.slot_units)), key=layer.slot_units.__getitem__)
    dim = layer.dim if tensor.ndim == 2 else 0
    reordered = tensor.index_select(dim, unit_index(by_unit, layer.unit_size))
    return reordered, unit_index(sorted(layer.slot_units), layer.unit_size)


@pytest.fixture(scope="session")
def s2() -> SimpleNamespace:
    """The helpers of this module."""
    return SimpleNamespace(
        make_batch=make_batch,
        calibration=calibration,
        rewritten=rewritten,
        s2ft_layers=s2ft_layers,
        base_coordinates=base_coordinates,
    )
