"""Switch among adapters in place on one base model: at most one fused at a time.

A switch unfuses the active adapter (``ftzoo_unfuse_adapter``) and fuses the next one
(``ftzoo_fuse_adapter``): S²FT adds and restores its dense column blocks, LoRA merges and
unmerges ``B @ A``, the core default adds dense deltas and restores the originals. After
any sequence of switches the weights are the base plus the active adapter, as a fresh
fuse would make them.
"""

from __future__ import annotations

import time
from typing import Any

from pluggy import HookRelay
from torch import nn

from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference.adapters import checked_deltas, hooks_for
from zoo.inference.generate import synchronize

BASE = "base"
"""Name that switches every adapter off."""


class AdapterSwitcher:
    """One base model in memory; at most one adapter fused into it at a time.

    Args:
        model: the plain base model (weights are changed in place).
        base_info: its identity, to refuse adapters of another base.
    """

    def __init__(self, model: nn.Module, base_info: BaseModelInfo) -> None:
        self.model = model
        self.base_info = base_info
        self.adapters: dict[str, tuple[Adapter, HookRelay]] = {}
        self.active: str | None = None
        self._undo: Any = None

    def add(self, name: str, adapter: Adapter) -> None:
        """Register an adapter, after checking that it fits the base model.

        Raises:
            AdapterError: it belongs to another base model or does not fit its shapes.
        """
        if name == BASE or name in self.adapters:
            raise ValueError(f"adapter name {name!r} is taken")
        adapter.base.check_same(self.base_info, what=f"adapter {name}")
        hooks = hooks_for(adapter, what=f"adapter {name}")
        checked_deltas(hooks, adapter, self.model, what=f"adapter {name}")  # fail here, not mid-switch
        self.adapters[name] = (adapter, hooks)

    def activate(self, name: str | None) -> float:
        """Make ``name`` the fused adapter (``None`` or ``"base"``: none).

        Returns:
            Seconds the switch took (unfuse + fuse, GPU work included).
        """
        name = None if name == BASE else name
        if name is not None and name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} (known: {', '.join(self.adapters) or 'none'})")
        device = next(self.model.parameters()).device
        synchronize(device)
        start = time.perf_counter()
        if self.active is not None:
            adapter, hooks = self.adapters[self.active]
            hooks.ftzoo_unfuse_adapter(model=self.model, adapter=adapter, undo=self._undo)
            self.active, self._undo = None, None
        if name is not None:
            adapter, hooks = self.adapters[name]
            self._undo = hooks.ftzoo_fuse_adapter(model=self.model, adapter=adapter, scale=1.0)
            self.active = name
        synchronize(device)
        return time.perf_counter() - start
