"""Many adapters in one batch, unfused: the base runs once, each adapter only on its rows.

Every base module that some adapter changes gets a forward hook (the module itself and
its parameter names stay as they are)::

    y = base(x)                                  # [B, T, out], the whole batch
    y[rows_a] += delta_a(x[rows_a])              # each adapter a on its own requests

The delta modules come from ``ftzoo_serving_deltas`` (LoRA's two factors, S²FT's column
blocks, or the core default's nonzero slice of the dense update). The request → adapter
assignment is set once per batch (:meth:`MixedAdapterModel.assign`); it holds for the whole
``generate`` call, since greedy decoding with a KV cache keeps the rows in place.

Per module and batch, a *plan* applies the deltas:

* :class:`ColumnPlan` batches the column-sliced deltas (S²FT) of all adapters into one
  ``bmm``: rows gathered per adapter ``[A, r, T, in]``, their selected columns gathered
  ``[A, r·T, k]``, times the stacked blocks ``[A, k, out]``, added back with
  ``index_add_``. When every row has its own adapter it is a single ``gather`` +
  ``baddbmm`` on the batch in place.
* :class:`LoopPlan` runs any other delta module on its adapter's rows, one adapter at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from zoo.adapter import Adapter, AdapterError, BaseModelInfo
from zoo.inference.adapters import FIT_ERRORS, checked_deltas, hooks_for
from zoo.inference.generate import Template, adapter_system_prompt, adapter_template
from zoo.serving import SliceDelta

MAX_PADDING = 2.0
"""A :class:`ColumnPlan` may stack at most this many times the columns the adapters hold
(padding to the widest adapter); beyond that the loop is cheaper."""


class LoopPlan:
    """Each adapter's delta module on its own rows."""

    def __init__(self, groups: list[tuple[torch.Tensor | None, nn.Module]]) -> None:
        self.groups = groups  # (row indices, or None for every row; delta module)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for rows, delta in self.groups:
            if rows is None:
                y += delta(x).to(y.dtype)
            else:
                y.index_add_(0, rows, delta(x.index_select(0, rows)).to(y.dtype))
        return y


class ColumnPlan:
    """Column-sliced linear deltas (no row slice, no bias) of several adapters, batched.

    Args:
        groups: ``(rows of the batch, SliceDelta)`` per adapter.
        batch_rows: rows of the batch.
    """

    def __init__(self, groups: list[tuple[list[int], SliceDelta]], batch_rows: int) -> None:
        groups = sorted(groups, key=lambda g: g[0][0])
        first = groups[0][1].block
        self.rmax = max(len(rows) for rows, _ in groups)
        self.kmax = max(len(_columns(d)) for _, d in groups)
        self.out = first.shape[0]
        a = len(groups)
        row_idx = torch.tensor([rows + rows[:1] * (self.rmax - len(rows)) for rows, _ in groups])  # [A, r]
        self.rows = row_idx.reshape(-1).to(first.device)  # [A·r]
        self.cols = torch.zeros(a, self.kmax, dtype=torch.long, device=first.device)  # [A, k], padded with col 0
        self.weight = first.new_zeros(a, self.kmax, self.out)  # [A, k, out], padded with zero rows
        for i, (_, delta) in enumerate(groups):
            cols = _columns(delta)
            self.cols[i, : len(cols)] = cols
            self.weight[i, : len(cols)] = delta.block.T  # block [out, k] → [k, out]
        self.mask = None
        if any(len(rows) < self.rmax for rows, _ in groups):  # padded row slots must add nothing
            mask = torch.tensor([[1.0] * len(rows) + [0.0] * (self.rmax - len(rows)) for rows, _ in groups])
            self.mask = mask.reshape(-1, 1, 1).to(first)  # [A·r, 1, 1]
        self.direct = self.rmax == 1 and row_idx[:, 0].tolist() == list(range(batch_rows))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.direct:  # row i has adapter i: one gather, one batched matmul-add
            xs = torch.gather(x, 2, self.cols[:, None, :].expand(b, t, self.kmax))  # [B, T, k]
            return torch.baddbmm(y, xs, self.weight)  # y + [B, T, k] @ [B, k, out]
        a = self.cols.shape[0]
        xg = x.index_select(0, self.rows).view(a, self.rmax, t, -1)  # [A, r, T, in]
        idx = self.cols[:, None, None, :].expand(a, self.rmax, t, self.kmax)
        xs = torch.gather(xg, 3, idx).view(a, self.rmax * t, self.kmax)  # [A, r·T, k]
        change = torch.bmm(xs, self.weight).view(a * self.rmax, t, self.out)  # [A·r, T, out]
        if self.mask is not None:
            change = change * self.mask
        return y.index_add_(0, self.rows, change)


def _columns(delta: SliceDelta) -> torch.Tensor:
    if delta.cols is not None:
        return delta.cols
    return torch.arange(delta.block.shape[1], device=delta.block.device)


def _column_kind(delta: nn.Module) -> bool:
    return isinstance(delta, SliceDelta) and delta.block is not None and delta.rows is None and delta.bias is None


class ModulePlan:
    """What one base module adds for the batch: batched column deltas, then a loop over the rest."""

    def __init__(self, assigned: list[tuple[list[int], nn.Module]], batch_rows: int, device: torch.device) -> None:
        self.batch_rows = batch_rows
        self.device = device
        columns = [(rows, d) for rows, d in assigned if _column_kind(d)]
        held = sum(len(_columns(d)) for _, d in columns)
        widest = max((len(_columns(d)) for _, d in columns), default=0)
        if len(columns) < 2 or len(columns) * widest > MAX_PADDING * held:
            columns = []  # one adapter, or very uneven widths: the loop is as fast
        batched = {id(d) for _, d in columns}
        self.columns = ColumnPlan(columns, batch_rows) if columns else None
        self.columns_fallback = self._loop(columns)  # for inputs that are not [B, T, in]
        self.rest = self._loop([(rows, d) for rows, d in assigned if id(d) not in batched])

    def _loop(self, groups: list[tuple[list[int], nn.Module]]) -> LoopPlan:
        every = list(range(self.batch_rows))
        return LoopPlan([(None if rows == every else torch.tensor(rows, device=self.device), d) for rows, d in groups])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.batch_rows:
            raise RuntimeError(
                f"the batch has {x.shape[0]} rows but the adapter assignment has {self.batch_rows}; "
                "assign one adapter (or None) per row"
            )
        if self.columns is not None:
            y = self.columns(x, y) if x.dim() == 3 else self.columns_fallback(x, y)
        return self.rest(x, y)


class MixedAdapterModel:
    """A base model that serves requests of many adapters in one batch, without fusing.

    Args:
        model: the plain base model, already on its device (delta modules are built there).
        base_info: its identity, to refuse adapters of another base.
    """

    def __init__(self, model: nn.Module, base_info: BaseModelInfo) -> None:
        self.model = model
        self.base_info = base_info
        self.adapters: dict[str, dict[str, nn.Module]] = {}
        self.templates: dict[str, Template] = {}  # the prompt template each adapter was trained with
        self.system_prompts: dict[str, str | None] = {}  # and its chat system prompt, when it set one
        self._hooks: dict[str, RemovableHandle] = {}
        self._plans: dict[str, ModulePlan] = {}
        self._in_delta = False

    def add_adapter(self, name: str, adapter: Adapter) -> None:
        """Build the adapter's delta modules (``ftzoo_serving_deltas``) beside the base.

        Raises:
            AdapterError: it belongs to another base model or names modules the base lacks.
        """
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        adapter.base.check_same(self.base_info, what=f"adapter {name}")
        hooks = hooks_for(adapter, what=f"adapter {name}")
        checked_deltas(hooks, adapter, self.model, what=f"adapter {name}")  # a wrong key or shape, named
        try:
            deltas = hooks.ftzoo_serving_deltas(adapter=adapter, model=self.model)
        except AdapterError:
            raise
        except FIT_ERRORS as err:
            raise AdapterError(f"adapter {name} does not fit the base model: {err}") from err
        modules = dict(self.model.named_modules())
        for module_name in deltas:
            if module_name not in modules:
                raise AdapterError(f"adapter {name} changes module {module_name!r}, which the base model lacks")
        device = next(self.model.parameters()).device
        self.adapters[name] = {n: d.to(device).eval() for n, d in deltas.items()}
        self.templates[name] = adapter_template(adapter)
        self.system_prompts[name] = adapter_system_prompt(adapter)
        for module_name in deltas:
            if module_name not in self._hooks:
                self._hooks[module_name] = modules[module_name].register_forward_hook(self._hook(module_name))

    def remove_adapter(self, name: str) -> None:
        """Forget an adapter; unhook modules no adapter changes any more."""
        del self.adapters[name]
        del self.templates[name]
        del self.system_prompts[name]
        used = {m for deltas in self.adapters.values() for m in deltas}
        for module_name in [m for m in self._hooks if m not in used]:
            self._hooks.pop(module_name).remove()

    def _hook(self, module_name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            plan = self._plans.get(module_name)
            if plan is None or self._in_delta:  # a delta module may call the base module itself
                return None
            self._in_delta = True
            try:
                return plan(args[0], output)
            finally:
                self._in_delta = False

        return hook

    @contextlib.contextmanager
    def assign(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Within the block, row ``i`` of every batch runs adapter ``adapters[i]`` (``None``: base).

        Raises:
            KeyError: an adapter name is not loaded.
        """
        unknown = sorted({a for a in adapters if a is not None and a not in self.adapters})
        if unknown:
            raise KeyError(f"no adapter named {unknown} is loaded (loaded: {sorted(self.adapters) or 'none'})")
        rows: dict[str, list[int]] = {}
        for i, name in enumerate(adapters):
            if name is not None:
                rows.setdefault(name, []).append(i)
        per_module: dict[str, list[tuple[list[int], nn.Module]]] = {}
        for name, indices in rows.items():
            for module_name, delta in self.adapters[name].items():
                per_module.setdefault(module_name, []).append((indices, delta))
        device = next(self.model.parameters()).device
        self._plans = {m: ModulePlan(assigned, len(adapters), device) for m, assigned in per_module.items()}
        try:
            yield
        finally:
            self._plans = {}
