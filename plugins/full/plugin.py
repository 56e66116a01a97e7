"""Full fine-tuning: every base weight (optionally a subset, by name pattern) trains.

Its adapter holds the trained tensors themselves, named as the base parameters; the
update is their difference from the base, computed against the base it is applied to.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from zoo import Adapter, Method, check_trainable_parameters, hookimpl, packed_weights


class FullFineTuning(Method):
    """Train the base weights directly.

    Args:
        include: regular expression; only parameters whose name matches train
            (default: all).
        exclude: regular expression of parameters kept frozen (e.g. ``embed_tokens``).
    """

    name = "full"
    prefix = ""

    def __init__(self, include: str = ".*", exclude: str | None = None) -> None:
        self.include = include
        self.exclude = exclude

    def _chosen(self, name: str) -> bool:
        if not re.search(self.include, name):
            return False
        return not (self.exclude and re.search(self.exclude, name))

    @hookimpl
    def ftzoo_select_parameters(self, model: nn.Module) -> list[str]:
        return [name for name, _ in model.named_parameters() if self._chosen(name)]

    @hookimpl
    def ftzoo_quantized_base(self) -> bool:
        return False  # it trains the base weights themselves, which a quantized weight cannot take

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: list[str]) -> None:
        packed = [name for name in packed_weights(model) if self._chosen(name)]  # quantized layers it would skip
        check_trainable_parameters(model, [*selection, *packed], "full fine-tuning")  # before any change
        for name in selection:
            model.get_parameter(name).requires_grad_(True)

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        deltas = {}
        for name, trained in adapter.tensors.items():
            base = model.get_parameter(name).detach()
            if trained.shape != base.shape:
                raise ValueError(f"full adapter tensor {name!r} has shape {list(trained.shape)}, the base {list(base.shape)}")
            deltas[name] = trained.to(base) - base
        return deltas

    @hookimpl
    def ftzoo_fuse_adapter(self, model: nn.Module, adapter: Adapter, scale: float) -> dict[str, torch.Tensor] | None:
        if scale != 1.0:
            return None  # the default adds scale x delta
        undo = {}
        with torch.no_grad():
            for name, trained in adapter.tensors.items():
                param = model.get_parameter(name)
                undo[name] = param.detach().clone()
                param.copy_(trained)
        return undo

    @hookimpl
    def ftzoo_merge_adapters(self) -> None:
        return None  # merged as dense deltas by the merge tool
