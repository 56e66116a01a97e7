"""The accuracy ``lightning test`` reports is the exact share of correct answers, in any precision."""

from __future__ import annotations

import torch

from zoo.task_accuracy import TaskAccuracy


class TwoTasks:
    def eval_tasks(self, stage):
        return ["math/gsm8k", "arithmetic"]

    def is_correct(self, task, text, answer):
        return text == answer


def test_counts_are_exact_when_the_module_is_converted_to_bf16():
    """bf16-true sets bf16 as the default dtype and converts the module with ``.to(bfloat16)``
    (metric states included); a bf16 mean of 200 answers with 36 right reads 0.1797, not 0.18."""
    accuracy = TaskAccuracy()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        accuracy.setup(TwoTasks(), "test")
        accuracy.to(torch.bfloat16)
        for start in range(0, 200, 50):  # four batches of 50, as the quickstart's evaluation
            texts = ["1" if i < 36 else "0" for i in range(start, start + 50)]
            accuracy.update(TwoTasks(), ["arithmetic"] * 50, texts, ["1"] * 50)
        accuracy.update(TwoTasks(), ["math/gsm8k"] * 3, ["7", "7", "x"], ["7"] * 3)
    finally:
        torch.set_default_dtype(previous)
    assert accuracy.metrics["arithmetic"].compute().item() == 36 / 200
    assert accuracy.metrics["math_gsm8k"].compute().item() == 2 / 3
