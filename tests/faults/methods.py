"""Method plugins that break the contract as an author might, for the fault tests."""

from __future__ import annotations

import torch
from stub_methods import Norms

from zoo import hookimpl


class NormsOfLayers(Norms):
    """A correct method whose init argument is a set (not JSON): refused when it is loaded."""

    name = "norms-of-layers"

    def __init__(self, layers: set[int] | None = None) -> None:
        self.layers = layers


class Impostor(Norms):
    """A third-party method that registers itself under a built-in name (``lora``)."""

    name = "lora"


class ValueDeltas(Norms):
    """Trains the norms, but its deltas are the trained weights, not their differences from the base."""

    name = "value-deltas"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return dict(adapter.tensors)


class StrangerDeltas(Norms):
    """Its deltas name a parameter the base does not have."""

    name = "stranger-deltas"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {"model.layers.0.nonexistent.weight": torch.zeros(2)}


class BatchedDeltas(Norms):
    """Its deltas are zero, but with a leading batch axis: not the shape of the base weight."""

    name = "batched-deltas"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {n: torch.zeros(1, *model.get_parameter(n).shape) for n in adapter.tensors}


class FailingDeltas(Norms):
    """Its deltas hook fails on any adapter (here: on the untrained one, before training)."""

    name = "failing-deltas"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        raise KeyError("lm_head.weight")
