"""A method and a callback that record, per rank, what a distributed run did.

They run inside the processes that Lightning launches, so they write files, one per rank,
into a folder that the test reads afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback
from torch import nn

from plugins.full.plugin import FullFineTuning
from zoo import hookimpl


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _append(folder: str, name: str, row: dict[str, Any]) -> None:
    with open(Path(folder) / f"{name}-rank{_rank()}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


class RankChoice(FullFineTuning):
    """Full fine-tuning of decoder layer ``<rank>``: a selection that differs on every rank
    if ranks selected for themselves. Logs where it selected, what each rank rewrote and
    where the adapter was saved.

    Args:
        log_dir: folder for ``{select,rewrite,save}-rank<r>.jsonl``.
    """

    name = "rank-choice"

    def __init__(self, log_dir: str) -> None:
        super().__init__(include=".*", exclude=None)
        self.log_dir = log_dir

    @hookimpl
    def ftzoo_select_parameters(self, model: nn.Module) -> list[str]:
        chosen = [name for name, _ in model.named_parameters() if f"layers.{_rank()}." in name]
        _append(self.log_dir, "select", {"selection": chosen})
        return chosen

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: list[str]) -> None:
        _append(self.log_dir, "rewrite", {"selection": selection})
        super().ftzoo_rewrite_model(model=model, selection=selection)

    @hookimpl
    def ftzoo_save_adapter_files(self, folder: str) -> None:
        _append(self.log_dir, "save", {"folder": folder})


class BatchLog(Callback):
    """Logs every training batch a rank sees: epoch, the texts of its records and their lengths.

    Args:
        log_dir: folder for ``batches-rank<r>.jsonl``.
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: dict[str, Any], batch_idx: int) -> None:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        texts = [pl_module.tokenizer.decode(ids[:n]) for ids, n in zip(batch["input_ids"], lengths)]
        _append(self.log_dir, "batches", {"epoch": trainer.current_epoch, "texts": texts, "lengths": lengths})
