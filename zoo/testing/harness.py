"""Train a method on a tiny model the way ``lightning fit`` does, in a second, without Lightning.

:func:`train` prepares the method with :func:`zoo.prepare.prepare` (freeze → select →
rewrite → trainable, the module's own path), runs a few AdamW steps that call the
backward and optimizer hooks in the order :class:`zoo.module.FineTuneModule` calls them
under Lightning (``tests/zoo/test_hook_order.py`` proves the two orders agree), and
extracts the adapter with :func:`zoo.prepare.extract_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.adapter import Adapter, BaseModelInfo
from zoo.method import Method
from zoo.prepare import extract_adapter, prepare
from zoo.quantization import Quantization, quantize
from zoo.testing.models import tiny_model


def batches(
    count: int = 3, size: int = 2, length: int = 12, vocab: int = 260, seed: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Random token batches with labels (the causal LM loss needs no other data)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(4, vocab, (size, length), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def base_model(arch: str = "llama-gqa", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen tiny base, as the module loads it (same seed → same weights)."""
    return tiny_model(arch, seed=0, dtype=dtype).requires_grad_(False)


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@dataclass
class Trained:
    """What training one method produced."""

    method: Method
    hooks: Any
    model: nn.Module
    selection: Any
    adapter: Adapter
    trainable: list[tuple[str, nn.Parameter]]


def train_steps(hooks: Any, model: nn.Module, optimizer: torch.optim.Optimizer, data: list[dict[str, torch.Tensor]]) -> None:
    """One optimizer step per batch, calling the hooks in the module's order (no accumulation)."""
    model.train()
    for batch in data:
        loss = model(**batch, use_cache=False).loss
        hooks.ftzoo_before_backward(model=model, loss=loss)
        loss.backward()
        hooks.ftzoo_after_backward(model=model)
        hooks.ftzoo_before_optimizer_step(model=model, optimizer=optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hooks.ftzoo_after_optimizer_step(model=model)
    model.eval()


def train(
    method: Method, arch: str = "llama-gqa", steps: int = 3, lr: float = 1e-2, dtype=torch.float32,
    quantization: Quantization = "none",
) -> Trained:
    """Prepare ``method`` on a tiny base (quantized as ``quantization``, as ``--model.quantization``
    does), train it for ``steps`` AdamW steps, extract its adapter."""
    data = batches(count=steps)
    model = base_model(arch, dtype)
    base = BaseModelInfo.of(model, f"tiny-{arch}")  # the unquantized base's identity, as the module takes it
    quantize(model, quantization)
    prepared = prepare(model, method, calibration_batches=lambda: iter(data), seed=0)
    optimizer = torch.optim.AdamW([p for _, p in prepared.trainable], lr=lr, weight_decay=0.0)
    train_steps(prepared.hooks, model, optimizer, data)
    adapter = extract_adapter(prepared.hooks, method, model, prepared.selection, base, {"global_step": steps})
    return Trained(method, prepared.hooks, model, prepared.selection, adapter, prepared.trainable)
