from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from tiny_adapters import train_adapter

from zoo.adapter import Adapter, BaseModelInfo, save_adapter
from zoo.loading import load_model


class TinyBase:
    """The session's tiny Llama: its folder, a loaded copy and its identity."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.model = load_model(str(folder)).eval()
        self.info = BaseModelInfo.of(self.model, str(folder))
        self._cache: dict[tuple[str, int], Adapter] = {}

    def fresh(self) -> torch.nn.Module:
        """A copy of the base model to change."""
        return copy.deepcopy(self.model)

    def adapter(self, method: str, seed: int = 0) -> Adapter:
        """An adapter of ``method`` trained a few steps (cached per session)."""
        key = (method, seed)
        if key not in self._cache:
            self._cache[key] = train_adapter(method, self.model, self.info, seed=seed)
        return copy.deepcopy(self._cache[key])

    def saved(self, method: str, folder: Path, seed: int = 0) -> Path:
        """Save ``adapter(method, seed)`` under ``folder``; return the folder."""
        save_adapter(self.adapter(method, seed), folder)
        return folder


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir: Path) -> TinyBase:
    return TinyBase(tiny_llama_dir)


@pytest.fixture(scope="session")
def other_base(tmp_path_factory) -> TinyBase:
    """Same architecture and shapes as ``tiny``, other weights: adapters of it must be refused."""
    from tiny_models import save_tiny_model

    return TinyBase(save_tiny_model(tmp_path_factory.mktemp("other-llama"), "llama-gqa", seed=1))


@pytest.fixture
def recipe(tiny_llama_dir, tmp_path):
    """A tiny `lightning fit` recipe (tiny Llama, arithmetic data) for tools.compare and tools.study."""
    config = {
        "seed_everything": 0,
        "model": {"model": str(tiny_llama_dir), "warmup_steps": 1},
        "data": {
            "class_path": "datamodules.ArithmeticDataModule",
            "init_args": {"num_train": 64, "num_val": 0, "num_test": 0, "prompt_style": "chat", "batch_size": 4},
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "unused"}},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
