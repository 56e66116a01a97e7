"""Validation, test and predict steps of ``FineTuneModule``: greedy generations, scored per task.

The data module names its evaluation tasks and scores a generation against an answer
(``eval_tasks``, ``is_correct``, ``extract_answer``); :class:`EvaluationSteps` answers each
batch's prompts greedily through :func:`zoo.inference.greedy_answers` (the path ``tools.evaluate``
and the server take too) and :class:`TaskAccuracy` keeps a mean per task, reduced across ranks
by torchmetrics, and logs each task's accuracy and their average.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from zoo.inference.greedy import greedy_answers


def metric_key(task: str) -> str:
    """A task name as a module key (``ModuleDict`` keys are identifiers)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", task)


class TaskAccuracy(nn.Module):
    """Accuracy of greedy generations, per task of the data module."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict()
        self.names: dict[str, str] = {}
        self.last: dict[str, float] = {}

    def setup(self, datamodule: Any, stage: str) -> None:
        """One metric per task the data module evaluates at ``stage`` (nothing for predict)."""
        if datamodule is None or not hasattr(datamodule, "eval_tasks") or stage == "predict":
            return
        for task in datamodule.eval_tasks("test" if stage == "test" else "validate"):
            key = metric_key(task)
            self.names[key] = task
            if key not in self.metrics:
                self.metrics[key] = MeanMetric()

    def update(self, datamodule: Any, tasks: list[str], texts: list[str], answers: list[Any]) -> None:
        for task, text, answer in zip(tasks, texts, answers):
            self._exact(metric_key(task)).update(float(datamodule.is_correct(task, text, answer)))

    def _exact(self, key: str) -> MeanMetric:
        """The task's metric, in float64: ``bf16-true`` converts the module with ``.to(bfloat16)``,
        which torchmetrics applies to metric states too, and a bf16 mean of 200 answers with 36
        right reads 0.1797."""
        metric = self.metrics[key]
        if metric.mean_value.dtype != torch.float64:
            metric.set_dtype(torch.float64)
        return metric

    def log(self, module: Any, prefix: str) -> None:
        """Log each task's accuracy and the average, print them, and reset (not while
        Lightning's sanity check runs: those few batches score nothing)."""
        scores = {}
        for key, metric in self.metrics.items():
            if metric.update_count > 0:
                scores[self.names[key]] = metric.compute().item()
            metric.reset()
        if not scores or module.trainer.sanity_checking:
            return
        for task, score in scores.items():
            module.log(f"{prefix}/acc/{task}", score, rank_zero_only=True)
        average = sum(scores.values()) / len(scores)
        module.log(f"{prefix}/acc", average, prog_bar=True, rank_zero_only=True)
        self.last = {"average": average, **scores}
        lines = "\n".join(f"  {task:<24} {score:7.2%}" for task, score in scores.items())
        rank_zero_info(f"{prefix} accuracy (greedy generation):\n{lines}\n  {'average':<24} {average:7.2%}")


def prediction_rows(datamodule: Any, batch: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
    """What ``lightning predict`` writes per prompt: the generation, and its score where the data has answers."""
    rows = []
    for i, text in enumerate(texts):
        task, answer = batch["tasks"][i], batch["answers"][i]
        row = {"task": task, "prompt": batch["prompts"][i], "generation": text, "answer": answer}
        if answer:
            row["extracted"] = datamodule.extract_answer(task, text)
            row["correct"] = datamodule.is_correct(task, text, answer)
        rows.append(row)
    return rows


class EvaluationSteps:
    """The evaluation hooks of a LightningModule that has ``model``, ``tokenizer``,
    ``accuracy`` (a :class:`TaskAccuracy`) and ``_loss(batch)``."""

    def setup(self, stage: str) -> None:
        self.accuracy.setup(self.trainer.datamodule, stage)

    def _generate(self, batch: dict[str, Any]) -> list[str]:
        """The batch's greedy answers, its prompts decoded together (their padding stripped)."""
        rows = zip(batch["prompt_input_ids"].tolist(), batch["prompt_attention_mask"].tolist())
        prompts = [[token for token, real in zip(ids, mask) if real] for ids, mask in rows]
        return greedy_answers(self.model, self.tokenizer, prompts, self.trainer.datamodule.max_new_tokens, len(prompts))

    def _evaluation_step(self, batch: dict[str, Any], prefix: str) -> None:
        self.log(f"{prefix}/loss", self._loss(batch), prog_bar=True, batch_size=len(batch["input_ids"]), sync_dist=True)
        self.accuracy.update(self.trainer.datamodule, batch["tasks"], self._generate(batch), batch["answers"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.accuracy.log(self, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.accuracy.log(self, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return prediction_rows(self.trainer.datamodule, batch, self._generate(batch))
