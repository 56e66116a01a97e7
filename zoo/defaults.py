"""What the core does for a hook the chosen method does not implement.

Every implementation here is ``trylast``: a method's own implementation of a
``firstresult`` hook answers first, and these answer only when it returns ``None``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.adapter import Adapter
from zoo.hookspecs import hookimpl
from zoo.serving import serving_modules


class CoreDefaults:
    """Default implementations, registered in every run's plugin manager."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook  # to build defaults from other hooks (fuse from deltas)

    @hookimpl(trylast=True)
    def ftzoo_quantized_base(self) -> bool:
        """A method trains on a quantized base only if it says so."""
        return False

    @hookimpl(trylast=True)
    def ftzoo_trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    @hookimpl(trylast=True)
    def ftzoo_extract_adapter(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trainable parameters by name: right for methods that add their own
        parameters in base coordinates (LoRA); wrong for those that permute or train
        base weights, which implement this hook."""
        trainable = self.hook.ftzoo_trainable_parameters(model=model)
        return {name: p.detach() for name, p in trainable}

    @hookimpl(trylast=True)
    def ftzoo_adapter_deltas(self, adapter: Adapter) -> dict[str, torch.Tensor]:
        raise NotImplementedError(
            f"method {adapter.method!r} does not implement ftzoo_adapter_deltas, which every "
            "method must (it is how adapters are fused, merged and exported)"
        )

    @hookimpl(trylast=True)
    def ftzoo_load_adapter(self, model: nn.Module, adapter: Adapter) -> bool:
        self.hook.ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
        return True

    @hookimpl(trylast=True)
    def ftzoo_fuse_adapter(self, model: nn.Module, adapter: Adapter, scale: float) -> dict[str, torch.Tensor]:
        """Add dense deltas; keep the originals so that unfusing is exact."""
        deltas = self.hook.ftzoo_adapter_deltas(adapter=adapter, model=model)
        undo = {}
        with torch.no_grad():
            for name, delta in deltas.items():
                param = model.get_parameter(name)
                undo[name] = param.detach().clone()
                param.add_(delta.to(device=param.device, dtype=param.dtype), alpha=scale)
        return undo

    @hookimpl(trylast=True)
    def ftzoo_unfuse_adapter(self, model: nn.Module, undo: dict[str, torch.Tensor]) -> bool:
        with torch.no_grad():
            for name, original in undo.items():
                model.get_parameter(name).copy_(original)
        return True

    @hookimpl(trylast=True)
    def ftzoo_serving_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, nn.Module]:
        """Delta modules from the dense deltas, keeping only nonzero rows and columns
        (:mod:`zoo.serving`)."""
        deltas = self.hook.ftzoo_adapter_deltas(adapter=adapter, model=model)
        return serving_modules(deltas, model)
