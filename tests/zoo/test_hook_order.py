"""The backward and optimizer hooks are called in the documented order, under gradient
accumulation, by ``lightning fit``; the test harness (:mod:`zoo.testing.harness`) calls them
in the same order."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import ArithmeticDataModule
from stub_methods import Norms
from zoo import hookimpl
from zoo.module import FineTuneModule
from zoo.prepare import prepare
from zoo.testing import base_model, batches
from zoo.testing.harness import train_steps

pytestmark = pytest.mark.slow  # trains through Lightning


class Recorder(Norms):
    """Trains the norms and records every backward and optimizer hook call (a test plugin)."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def ftzoo_before_backward(self, model, loss):
        assert loss.requires_grad and all(p.grad is None or p.grad.abs().sum() >= 0 for p in model.parameters())
        self.calls.append("before_backward")

    @hookimpl
    def ftzoo_after_backward(self, model):
        assert any(p.grad is not None for p in model.parameters() if p.requires_grad)  # backward has run
        self.calls.append("after_backward")

    @hookimpl
    def ftzoo_before_optimizer_step(self, model, optimizer):
        assert isinstance(optimizer, torch.optim.Optimizer)
        self.calls.append("before_optimizer_step")

    @hookimpl
    def ftzoo_after_optimizer_step(self, model):
        self.calls.append("after_optimizer_step")


def expected(steps: int, accumulate: int) -> list[str]:
    micro = ["before_backward", "after_backward"]
    return (micro * accumulate + ["before_optimizer_step", "after_optimizer_step"]) * steps


def test_fit_calls_backward_and_optimizer_hooks_in_order_under_accumulation(tiny_llama_dir, tmp_path):
    method = Recorder()
    module = FineTuneModule(model=str(tiny_llama_dir), method=method, optimizer=torch.optim.SGD)
    data = ArithmeticDataModule(tokenizer=module.tokenizer, num_train=16, num_val=0, batch_size=2, prompt_style="chat")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        accumulate_grad_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    assert method.calls == expected(steps=2, accumulate=3)


def test_the_harness_calls_them_in_the_same_order():
    method = Recorder()
    prepared = prepare(base_model(), method)
    optimizer = torch.optim.SGD([p for _, p in prepared.trainable], lr=0.1)
    train_steps(prepared.hooks, prepared.model, optimizer, batches(count=2))
    assert method.calls == expected(steps=2, accumulate=1)
