"""Adapters of any installed method on a tiny model, built in a second for tool tests.

:func:`train_adapter` runs a few optimizer steps through the method's own hooks (select,
rewrite, trainable parameters, backward and step hooks, extract), so every method
builds its adapter the way ``fit`` does. The ``merged`` method does not train; its
adapters are built from dense deltas (:func:`column_deltas` makes S²FT-shaped ones).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference import MixedAdapterModel
from zoo.merging import merged_adapter
from zoo.plugins import available_methods, method_class, method_hooks, method_name

METHODS = sorted(available_methods())
"""Every installed method: tests over methods build each adapter with the method's own hooks."""


def random_batch(vocab: int, seed: int, rows: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def train_adapter(method: str | object, model: nn.Module, base: BaseModelInfo, seed: int = 0, steps: int = 2) -> Adapter:
    """Train ``method`` (a registered name: its default config; or a method instance) for a few
    steps on random tokens; return its adapter.

    ``model`` is not changed (a copy is trained).
    """
    if method == "merged":
        return merged_adapter(column_deltas(model, seed), base, info={"built_by": "tests"})
    instance = method_class(method)() if isinstance(method, str) else method
    hooks = method_hooks(instance)
    work = copy.deepcopy(model).train().requires_grad_(False)
    batches = [random_batch(model.config.vocab_size, seed + i) for i in range(steps)]
    torch.manual_seed(seed)
    selection = hooks.ftzoo_select_parameters(model=work, calibration_batches=lambda: iter(batches), seed=seed)
    hooks.ftzoo_rewrite_model(model=work, selection=selection)
    params = [p for _, p in hooks.ftzoo_trainable_parameters(model=work)]
    optimizer = torch.optim.AdamW(params, lr=2e-2, weight_decay=0.0)
    for batch in batches:
        loss = work(**batch).loss
        hooks.ftzoo_before_backward(model=work, loss=loss)
        loss.backward()
        hooks.ftzoo_after_backward(model=work)
        hooks.ftzoo_before_optimizer_step(model=work, optimizer=optimizer)
        optimizer.step()
        optimizer.zero_grad()
        hooks.ftzoo_after_optimizer_step(model=work)
    tensors = hooks.ftzoo_extract_adapter(model=work, selection=selection)
    return Adapter(
        method=method_name(instance),
        config=instance.config(),
        selection=selection,
        base=base,
        tensors={k: v.detach().cpu().clone() for k, v in tensors.items()},
    )


def column_deltas(
    model: nn.Module, seed: int, modules: tuple[str, ...] = ("o_proj", "down_proj"), columns: int = 3
) -> dict[str, torch.Tensor]:
    """S²FT-shaped dense deltas: nonzero only in a few random input columns of each named
    linear (``o_proj``/``down_proj``: the selected heads and channels)."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, param in model.named_parameters():
        if name.endswith(".weight") and any(f".{m}." in name for m in modules):
            delta = torch.zeros_like(param)
            cols = torch.randperm(param.shape[1], generator=g)[:columns]
            delta[:, cols] = 0.05 * torch.randn(param.shape[0], columns, generator=g)
            deltas[name] = delta
    return deltas


def served(base: tuple[nn.Module, BaseModelInfo], adapters: dict[str, Adapter]):
    """A :class:`zoo.inference.MixedAdapterModel` on a copy of ``base`` (model, info) with ``adapters`` loaded."""
    model, info = base
    server = MixedAdapterModel(copy.deepcopy(model), info)
    for name, adapter in adapters.items():
        server.add_adapter(name, adapter)
    return server
