"""Many adapters in one batch, unfused: the base runs once, each adapter only on its rows.

Every base module that some adapter changes gets a forward hook (the module itself and
its parameter names stay as they are)::

    y = base(x)                                  # [B, T, out], the whole batch
    y[rows_a] += delta_a(x[rows_a])              # each adapter a on its own requests

The delta modules come from ``ftzoo_serving_deltas`` (LoRA's two factors, S²FT's column
blocks, or the core default's nonzero slice of the dense update). The request → adapter
assignment is set per forward pass or ``generate`` call (:meth:`MixedAdapterModel.assign`);
it holds for a whole ``generate`` call, since greedy decoding with a KV cache keeps the rows
in place.

Per module and batch, a *plan* applies the deltas:

* :class:`ColumnPlan` batches the column-sliced deltas (S²FT) of all adapters into one
  ``bmm``: rows gathered per adapter ``[A, r, T, in]``, their selected columns gathered
  ``[A, r·T, k]``, times the stacked blocks ``[A, k, out]``, added back with
  ``index_add_``. When every row has its own adapter it is a single ``gather`` +
  ``baddbmm`` on the batch in place.
* :class:`LowRankPlan` batches the low-rank deltas (LoRA's ``s · B A x``, DoRA's rescaled
  base output plus rescaled ``s · B A x``: a delta module's ``low_rank()``) of all adapters
  the same way: rows gathered per adapter ``[A, r·T, in]``, two ``bmm`` with the stacked
  factors (ranks padded with zeros), DoRA's vectors, added back with ``index_add_``.
* :class:`SparsePlan` batches the sparse deltas (sparse masks' ``x Δᵀ``: a delta module's
  ``sparse()``) of all adapters into one sparse product: their ``Δ`` as one block-diagonal CSR
  ``[A·out, A·in]`` times the rows gathered per adapter ``[A·in, r·T]``, added back with
  ``index_add_``. On CPU that is about half the time of one product per adapter when each
  adapter has a few rows of one token (decoding), and slower with many tokens (prefill), so
  wider inputs run one adapter at a time.
* :class:`LoopPlan` runs any other delta module on its adapter's rows, one adapter at a time.

Plans are cheap to rebuild (continuous batching assigns a new batch whenever a request
joins or leaves): the row indices are built once per batch (:class:`Assignment`), the
stacked column blocks, low-rank factors and sparse deltas are kept per module for the sets of
adapters batched recently (:class:`StackedColumns`, :class:`StackedLowRank`,
:class:`StackedSparse`), and the plans of the last few assignments are kept whole (a decoding
batch keeps its rows for many steps).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from zoo.adapter import Adapter, AdapterError, BaseModelInfo
from zoo.inference.adapters import FIT_ERRORS, checked_deltas, hooks_for
from zoo.inference.generate import Template, adapter_system_prompt, adapter_template
from zoo.serving import LowRankParts, SliceDelta, SparseParts

STACKS_PER_MODULE = 2
"""Stacked column blocks (and as many stacked low-rank factors and sparse deltas) kept between
batches, per hooked module (the most recent sets of adapters)."""
PLANS_KEPT = 4
"""Assignments whose plans are kept whole (each cache group of a batch is one assignment)."""
MAX_PADDING = 2.0
"""A :class:`ColumnPlan` may stack at most this many times the columns the adapters hold
(padding to the widest adapter); beyond that the loop is cheaper."""
SPARSE_BATCH_WIDTH = 32
"""A :class:`SparsePlan` batches its adapters' products when each has at most this many rows times
tokens (padded); wider inputs (prefill) run one adapter at a time. Measured at SmolLM2's shapes
(``python -m tools.bench.sparse_plan``, CPU, 1 thread): the batched product took 0.26-0.50 of the
loop's time at one token per row (decoding, 1-16 rows per adapter), 0.45-0.85 at 8 tokens,
0.82-1.05 at 32 and 0.88-1.95 at 64 (its input is copied into one large block)."""


class LoopPlan:
    """Each adapter's delta module on its own rows (a module with ``takes_base_output`` also gets
    the base module's output on them: DoRA rescales it)."""

    def __init__(self, groups: list[tuple[torch.Tensor | None, nn.Module]]) -> None:
        self.groups = groups  # (row indices, or None for every row; delta module)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for rows, delta in self.groups:
            extra = getattr(delta, "takes_base_output", False)
            if rows is None:
                y += (delta(x, y) if extra else delta(x)).to(y.dtype)
            else:
                xs = x.index_select(0, rows)
                change = delta(xs, y.index_select(0, rows)) if extra else delta(xs)
                y.index_add_(0, rows, change.to(y.dtype))
        return y


class Assignment:
    """The rows of each adapter in one batch, as index tensors built once for every module's plan.

    Continuous batching assigns a new batch whenever a request joins or leaves, so a plan
    must be cheap to build: the tensors here depend only on the rows, and are shared by all
    the modules whose plans need them.
    """

    def __init__(self, adapters: Sequence[str | None], device: torch.device) -> None:
        self.batch_rows = len(adapters)
        self.device = device
        self.rows: dict[str, list[int]] = {}
        for i, name in enumerate(adapters):
            if name is not None:
                self.rows.setdefault(name, []).append(i)
        self._index: dict[str, torch.Tensor | None] = {}
        self._padded: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor | None, bool, int]] = {}

    def index(self, name: str) -> torch.Tensor | None:
        """The rows of ``name`` (``None``: every row of the batch)."""
        if name not in self._index:
            rows = self.rows[name]
            every = len(rows) == self.batch_rows
            self._index[name] = None if every else torch.tensor(rows, device=self.device)
        return self._index[name]

    def padded(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None, bool, int]:
        """The rows of ``names`` (in that order), each padded to the most rows any has:
        ``(rows [A·r], mask of real slots [A·r, 1, 1] or None, row i has adapter i, r)``."""
        if names not in self._padded:
            groups = [self.rows[n] for n in names]
            rmax = max(map(len, groups))
            table = [rows + rows[:1] * (rmax - len(rows)) for rows in groups]  # [A, r]
            mask = None
            if any(len(rows) < rmax for rows in groups):  # padded row slots must add nothing
                mask = torch.tensor([[1.0] * len(rows) + [0.0] * (rmax - len(rows)) for rows in groups])
                mask = mask.reshape(-1, 1, 1).to(self.device)
            direct = rmax == 1 and [rows[0] for rows in table] == list(range(self.batch_rows))
            flat = torch.tensor([i for rows in table for i in rows], device=self.device)
            self._padded[names] = (flat, mask, direct, rmax)
        return self._padded[names]


class StackedColumns:
    """The column blocks of several adapters' deltas of one module, stacked (padded to the widest):
    ``cols [A, k]`` (padded with column 0) and ``weight [A, k, out]`` (padded with zero rows).
    They depend on the adapters only, so the model keeps them from batch to batch."""

    def __init__(self, deltas: list[SliceDelta]) -> None:
        first = deltas[0].block
        self.kmax = max(len(_columns(d)) for d in deltas)
        self.out = first.shape[0]
        self.cols = torch.zeros(len(deltas), self.kmax, dtype=torch.long, device=first.device)
        self.weight = first.new_zeros(len(deltas), self.kmax, self.out)
        for i, delta in enumerate(deltas):
            cols = _columns(delta)
            self.cols[i, : len(cols)] = cols
            self.weight[i, : len(cols)] = delta.block.T  # block [out, k] → [k, out]


class ColumnPlan:
    """Column-sliced linear deltas (no row slice, no bias) of several adapters, batched.

    Args:
        names: the adapters, in the model's order (the order they were added).
        stacked: their stacked column blocks, in the same order.
        assignment: the batch's rows.
    """

    def __init__(self, names: tuple[str, ...], stacked: StackedColumns, assignment: Assignment) -> None:
        """``names`` in the model's order of adapters; row ``i`` of ``stacked`` is adapter ``names[i]``."""
        self.rows, self.mask, self.direct, self.rmax = assignment.padded(names)
        self.cols, self.weight, self.kmax, self.out = stacked.cols, stacked.weight, stacked.kmax, stacked.out

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
        return _added_back(y, self.rows, change, self.mask)


class StackedLowRank:
    """The low-rank factors of several adapters' deltas of one module, stacked (ranks padded with
    zeros): ``a [A, in, r]``, ``b [A, r, out]`` (scaled), and for DoRA ``rescale`` and ``factor``
    ``[A, 1, out]`` (0 and 1 for a LoRA adapter), ``base_bias`` [out] or ``None``."""

    def __init__(self, parts: list[LowRankParts]) -> None:
        rank = max(p.a.shape[0] for p in parts)
        first = parts[0]
        self.a = first.a.new_zeros(len(parts), first.a.shape[1], rank)
        self.b = first.b.new_zeros(len(parts), rank, first.b.shape[0])
        for i, p in enumerate(parts):
            self.a[i, :, : p.a.shape[0]] = p.a.T
            self.b[i, : p.b.shape[1]] = p.b.T * p.scaling
        self.rescale = self.factor = None
        self.base_bias = next((p.base_bias for p in parts if p.base_bias is not None), None)
        if any(p.rescale is not None for p in parts):
            out = first.b.shape[0]
            self.rescale = torch.stack([_or(p.rescale, 0.0, out, first.a) for p in parts])[:, None]
            self.factor = torch.stack([_or(p.factor, 1.0, out, first.a) for p in parts])[:, None]


def _or(vector: torch.Tensor | None, fill: float, size: int, like: torch.Tensor) -> torch.Tensor:
    return vector.float() if vector is not None else torch.full((size,), fill, device=like.device)


class LowRankPlan:
    """Low-rank deltas of several adapters (a delta module's ``low_rank()``), batched.

    Args:
        names: the adapters, in the model's order.
        stacked: their stacked factors, in the same order.
        assignment: the batch's rows.
    """

    def __init__(self, names: tuple[str, ...], stacked: StackedLowRank, assignment: Assignment) -> None:
        self.rows, self.mask, _, self.rmax = assignment.padded(names)
        self.stacked = stacked

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.stacked
        _, t, width = x.shape
        adapters = s.a.shape[0]
        xg = x.index_select(0, self.rows).view(adapters, self.rmax * t, width).to(s.a.dtype)  # [A, r·T, in]
        change = torch.bmm(torch.bmm(xg, s.a), s.b)  # [A, r·T, out]
        if s.rescale is not None:  # DoRA: rescale the base output too
            base = y.index_select(0, self.rows).view(adapters, self.rmax * t, -1)
            if s.base_bias is not None:
                base = base - s.base_bias
            change = s.rescale * base.float() + s.factor * change.float()
        return _added_back(y, self.rows, change.view(adapters * self.rmax, t, -1), self.mask)


def _added_back(y: torch.Tensor, rows: torch.Tensor, change: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``y`` with each gathered row's change added back in place (padded row slots masked out)."""
    if mask is not None:
        change = change * mask
    return y.index_add_(0, rows, change.to(y.dtype))


def _parts(delta: nn.Module, protocol: str) -> LowRankParts | SparseParts | None:
    """What a delta module's ``low_rank()`` or ``sparse()`` gives, or ``None`` if it has no such method."""
    method = getattr(delta, protocol, None)
    return method() if callable(method) else None


class StackedSparse:
    """The sparse deltas of several adapters of one module as one block-diagonal CSR ``delta``
    ``[A·out, A·in]``: adapter ``a``'s rows shifted by ``a·out`` and its columns by ``a·in``, so
    one product applies every adapter to its own rows. Kept from batch to batch like the others.

    Raises:
        ValueError: the adapters' deltas differ in shape (they must change the same module).
    """

    def __init__(self, parts: list[SparseParts]) -> None:
        self.out, self.width = shapes = tuple(parts[0].shape)
        if any(tuple(p.shape) != shapes for p in parts):
            raise ValueError(f"sparse deltas of one module differ in shape: {[tuple(p.shape) for p in parts]}")
        self.adapters = len(parts)
        crows, start = [parts[0].crow.new_zeros(1)], 0
        for p in parts:  # each adapter's row pointers after the entries of those before it
            crows.append(p.crow[1:].to(torch.int64) + start)
            start += len(p.values)
        cols = torch.cat([p.cols.to(torch.int64) + a * self.width for a, p in enumerate(parts)])
        values = torch.cat([p.values.to(parts[0].values.dtype) for p in parts])
        with warnings.catch_warnings():  # torch warns that sparse CSR support is in beta
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.delta = torch.sparse_csr_tensor(
                torch.cat(crows), cols, values, (self.adapters * self.out, self.adapters * self.width),
                check_invariants=True,  # once per set of adapters: parts from any plugin are checked
            )


class SparsePlan:
    """Sparse deltas of several adapters (a delta module's ``sparse()``), batched into one product.

    Args:
        names: the adapters, in the model's order.
        stacked: their block-diagonal delta, in the same order.
        assignment: the batch's rows.
        loop: the same deltas one adapter at a time, for inputs wider than
            :data:`SPARSE_BATCH_WIDTH` (where the batched product is slower).
    """

    def __init__(self, names: tuple[str, ...], stacked: StackedSparse, assignment: Assignment, loop: LoopPlan) -> None:
        self.rows, self.mask, _, self.rmax = assignment.padded(names)
        self.stacked = stacked
        self.loop = loop

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.rmax * x.shape[1] > SPARSE_BATCH_WIDTH:
            return self.loop(x, y)
        return self.batched(x, y)

    def batched(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` plus every adapter's change on its rows, as one product whatever the width."""
        s = self.stacked
        _, t, width = x.shape
        wide = self.rmax * t
        xg = x.index_select(0, self.rows).to(s.delta.dtype).view(s.adapters, wide, width)
        xg = xg.transpose(1, 2).reshape(s.adapters * width, wide)  # adapter a's inputs at rows a·in..
        change = s.delta @ xg  # [A·out, r·T]
        change = change.view(s.adapters, s.out, wide).transpose(1, 2).reshape(s.adapters * self.rmax, t, s.out)
        return _added_back(y, self.rows, change, self.mask)


def _columns(delta: SliceDelta) -> torch.Tensor:
    if delta.cols is not None:
        return delta.cols
    return torch.arange(delta.block.shape[1], device=delta.block.device)


def _column_kind(delta: nn.Module) -> bool:
    return isinstance(delta, SliceDelta) and delta.block is not None and delta.rows is None and delta.bias is None


Stacked = StackedColumns | StackedLowRank | StackedSparse
"""What the model's cache keeps per module and set of adapters."""


class ModulePlan:
    """What one base module adds for the batch: batched column, low-rank and sparse deltas, then a
    loop over the rest.

    The batched plans need their adapters' deltas stacked, which costs a copy of every delta of the
    set. A prefill (several tokens per row) brings a new set of adapters with each group of
    requests, and its products are wide enough that a loop over the adapters is as fast: so a
    prefill runs the batched plans only when their stacks are kept already, and builds none (nor
    pushes out those the decoding batch uses). Decoding (one token per row) builds them on its
    first step and keeps them while the set of adapters holds.

    Args:
        assigned: ``(adapter, delta module)`` of the adapters in the batch that change this module.
        assignment: the batch's rows.
        stack: the stacked column blocks (``kind`` ``"columns"``), low-rank factors (``"low_rank"``)
            or sparse deltas (``"sparse"``) of a tuple of adapters, built by the model's cache from
            their delta modules.
        order: each adapter's place in the model's order (stacks follow it, so that one set
            of adapters has one stack whatever rows they hold).
        kept: whether the model's cache holds the stack of ``(kind, names)`` already.
    """

    def __init__(
        self,
        assigned: list[tuple[str, nn.Module]],
        assignment: Assignment,
        stack: Callable[[str, tuple[str, ...], list[nn.Module]], Stacked],
        order: dict[str, int],
        kept: Callable[[str, tuple[str, ...]], bool],
    ) -> None:
        self.batch_rows = assignment.batch_rows
        self._stack, self._kept, self._assignment = stack, kept, assignment
        self._wanted: list[tuple[str, tuple[str, ...], list[nn.Module]]] = []  # stacks the batched plans need
        self._built = False
        columns = [(n, d) for n, d in assigned if _column_kind(d)]
        held = sum(len(_columns(d)) for _, d in columns)
        widest = max((len(_columns(d)) for _, d in columns), default=0)
        if len(columns) < 2 or len(columns) * widest > MAX_PADDING * held:
            columns = []  # one adapter, or very uneven widths: the loop is as fast
        columns.sort(key=lambda group: order[group[0]])
        batched = {id(d) for _, d in columns}
        if columns:
            self._wanted.append(("columns", tuple(n for n, _ in columns), [d for _, d in columns]))
        low = sorted(((n, d) for n, d in assigned if id(d) not in batched and _parts(d, "low_rank") is not None),
                     key=lambda group: order[group[0]])  # fmt: skip
        if len(low) > 1:
            self._wanted.append(("low_rank", tuple(n for n, _ in low), [d for _, d in low]))
            columns += low
            batched |= {id(d) for _, d in low}
        sparse = sorted(((n, d) for n, d in assigned if id(d) not in batched and _parts(d, "sparse") is not None),
                        key=lambda group: order[group[0]])  # fmt: skip
        self._sparse_loop = None
        if len(sparse) > 1:
            self._wanted.append(("sparse", tuple(n for n, _ in sparse), [d for _, d in sparse]))
            self._sparse_loop = LoopPlan([(assignment.index(n), d) for n, d in sparse])
            columns += sparse
            batched |= {id(d) for _, d in sparse}
        self.columns = self.low_rank = self.sparse = None
        self.columns_fallback = LoopPlan([(assignment.index(n), d) for n, d in columns])  # each batched delta alone
        self.rest = LoopPlan([(assignment.index(n), d) for n, d in assigned if id(d) not in batched])

    def build(self) -> None:
        """The batched plans, their stacks built or taken from the model's cache."""
        for kind, names, deltas in self._wanted:
            stacked = self._stack(kind, names, deltas)
            if kind == "columns":
                self.columns = ColumnPlan(names, stacked, self._assignment)
            elif kind == "low_rank":
                self.low_rank = LowRankPlan(names, stacked, self._assignment)
            else:
                self.sparse = SparsePlan(names, stacked, self._assignment, self._sparse_loop)
        self._built = True

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.batch_rows:
            raise RuntimeError(
                f"the batch has {x.shape[0]} rows but the adapter assignment has {self.batch_rows}; "
                "assign one adapter (or None) per row"
            )
        if not self._built and x.dim() == 3 and (
            x.shape[1] == 1 or all(self._kept(kind, names) for kind, names, _ in self._wanted)
        ):
            self.build()
        if x.dim() != 3 or not self._built:  # the batched plans take [B, T, in]; a prefill builds no stacks
            y = self.columns_fallback(x, y)
        else:
            if self.columns is not None:
                y = self.columns(x, y)
            if self.low_rank is not None:
                y = self.low_rank(x, y)
            if self.sparse is not None:
                y = self.sparse(x, y)
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
        self._stacks: OrderedDict[tuple, Stacked] = OrderedDict()  # least recent first
        self._kept_plans: OrderedDict[tuple[str | None, ...], dict[str, ModulePlan]] = OrderedDict()
        self._in_delta = False
        self.versions: dict[str, int] = {}
        """Each loaded adapter's load number: an adapter loaded again under the same name gets a new
        one (what a cache of its outputs, such as a prefix cache, keys on)."""
        self._loads = itertools.count()

    def add_adapter(self, name: str, adapter: Adapter, deltas: dict[str, nn.Module] | None = None) -> None:
        """Add the adapter's delta modules (``ftzoo_serving_deltas``) beside the base: those
        :meth:`build_adapter` gave (``deltas``), or built now.

        Raises:
            AdapterError: it belongs to another base model or names modules the base lacks.
            ValueError: an adapter of that name is loaded.
        """
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        deltas = deltas if deltas is not None else self.build_adapter(name, adapter)
        self.adapters[name] = deltas
        self.versions[name] = next(self._loads)
        self._stacks.clear()
        self._kept_plans.clear()
        self.templates[name] = adapter_template(adapter)
        self.system_prompts[name] = adapter_system_prompt(adapter)
        modules = dict(self.model.named_modules())
        for module_name in deltas:
            if module_name not in self._hooks:
                self._hooks[module_name] = modules[module_name].register_forward_hook(self._hook(module_name))

    def build_adapter(self, name: str, adapter: Adapter) -> dict[str, nn.Module]:
        """Check the adapter against the base and build its delta modules on the base's device,
        without adding them: this only reads the base, so another thread may do it while the
        model runs (a server loads an adapter beside its decoding loop, then :meth:`add_adapter`).

        Raises:
            AdapterError: it belongs to another base model or names modules the base lacks.
        """
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
        return {n: d.to(device).eval() for n, d in deltas.items()}

    def remove_adapter(self, name: str) -> None:
        """Forget an adapter; unhook modules no adapter changes any more."""
        del self.adapters[name]
        del self.versions[name]
        del self.templates[name]
        del self.system_prompts[name]
        self._stacks.clear()
        self._kept_plans.clear()
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

    def _stacked(
        self, module_name: str, kind: str, names: tuple[str, ...], deltas: list[nn.Module]
    ) -> Stacked:
        """The stacked blocks, factors or sparse deltas of ``names`` for one module, kept for the sets of adapters
        batched recently (a running batch keeps the same set for many steps while its rows come and go)."""
        key = (module_name, kind, names)
        if key in self._stacks:
            self._stacks.move_to_end(key)
        else:
            same_kind = [k for k in self._stacks if k[1] == kind]  # least recent first
            for old in same_kind[: max(len(same_kind) - STACKS_PER_MODULE * max(len(self._hooks), 1) + 1, 0)]:
                del self._stacks[old]
            if kind == "columns":
                stacked: Stacked = StackedColumns(deltas)
            elif kind == "low_rank":
                stacked = StackedLowRank([_parts(d, "low_rank") for d in deltas])
            else:
                stacked = StackedSparse([_parts(d, "sparse") for d in deltas])
            self._stacks[key] = stacked
        return self._stacks[key]

    def _build_plans(self, adapters: Sequence[str | None]) -> dict[str, ModulePlan]:
        assignment = Assignment(adapters, next(self.model.parameters()).device)
        per_module: dict[str, list[tuple[str, nn.Module]]] = {}
        for name in assignment.rows:
            for module_name, delta in self.adapters[name].items():
                per_module.setdefault(module_name, []).append((name, delta))
        order = {name: i for i, name in enumerate(self.adapters)}
        return {
            m: ModulePlan(
                assigned, assignment, functools.partial(self._stacked, m), order,
                lambda kind, names, m=m: (m, kind, names) in self._stacks,
            )
            for m, assigned in per_module.items()
        }  # fmt: skip

    @contextlib.contextmanager
    def assign(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Within the block, row ``i`` of every batch runs adapter ``adapters[i]`` (``None``: base).

        Raises:
            KeyError: an adapter name is not loaded.
        """
        unknown = sorted({a for a in adapters if a is not None and a not in self.adapters})
        if unknown:
            raise KeyError(f"no adapter named {unknown} is loaded (loaded: {sorted(self.adapters) or 'none'})")
        key = tuple(adapters)
        if key in self._kept_plans:
            self._kept_plans.move_to_end(key)
        else:
            while len(self._kept_plans) >= PLANS_KEPT:
                self._kept_plans.popitem(last=False)
            self._kept_plans[key] = self._build_plans(adapters)
        self._plans = self._kept_plans[key]
        try:
            yield
        finally:
            self._plans = {}
