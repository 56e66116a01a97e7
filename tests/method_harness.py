"""Train any method on a tiny model with a plain PyTorch loop that calls the hooks in the
order ``zoo/module.py`` does, and the helpers the method tests share.

Order (see :mod:`zoo.hookspecs`): freeze → select → rewrite → trainable parameters →
per step: before_backward, backward, after_backward, before_optimizer_step, step,
after_optimizer_step → extract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tiny_models import tiny_model
from torch import nn

from zoo import Adapter, BaseModelInfo, Method
from zoo.plugins import method_hooks, method_name


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
    model = tiny_model(arch, seed=0, dtype=dtype)
    model.requires_grad_(False)
    return model


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


def train(method: Method, arch: str = "llama-gqa", steps: int = 3, lr: float = 1e-2, dtype=torch.float32) -> Trained:
    """Select, rewrite and train ``method`` for ``steps`` AdamW steps; extract its adapter."""
    hooks = method_hooks(method)
    model = base_model(arch, dtype)
    base = BaseModelInfo.of(model, f"tiny-{arch}")
    data = batches(count=steps)
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=lambda: iter(data), seed=0)
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    trainable = hooks.ftzoo_trainable_parameters(model=model)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=lr, weight_decay=0.0)
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
    tensors = hooks.ftzoo_extract_adapter(model=model, selection=selection)
    adapter = Adapter(
        method=method_name(method),
        config=method.config(),
        selection=selection,
        base=base,
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
        info={"global_step": steps},
    )
    return Trained(method, hooks, model, selection, adapter, trainable)


def fit_args(model_dir, root, max_steps: int, method: str, *extra: str) -> list[str]:
    """``lightning fit`` arguments for a short run of ``method`` on generated arithmetic."""
    return [
        "fit",
        "--seed_everything", "7",
        "--model.model", str(model_dir),
        "--model.method", method,
        "--model.optimizer", "AdamW",
        "--model.optimizer.lr", "1e-2",
        "--model.calibration_batches", "2",
        "--data", "datamodules.ArithmeticDataModule",
        "--data.num_train", "32",
        "--data.num_val", "4",
        "--data.batch_size", "4",
        "--data.max_length", "256",
        "--data.prompt_style", "chat",
        "--trainer.accelerator", "cpu",
        "--trainer.max_steps", str(max_steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(root),
        "--trainer.logger.name", "run",
        "--trainer.logger.version", "0",
        *extra,
    ]  # fmt: skip
