from __future__ import annotations

from pathlib import Path

import pytest
from tiny_adapters import train_adapter

from zoo.adapter import Adapter, BaseModelInfo, save_adapter
from zoo.loading import load_model


class TinyBase:
    """The session's tiny Llama loaded once, and adapters of it trained a few steps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.model = load_model(str(folder)).eval()
        self.info = BaseModelInfo.of(self.model, str(folder))

    def adapter(self, method: str, seed: int = 0) -> Adapter:
        return train_adapter(method, self.model, self.info, seed=seed)

    def saved(self, method: str, folder: Path, seed: int = 0) -> Path:
        return save_adapter(self.adapter(method, seed), folder)


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir: Path) -> TinyBase:
    return TinyBase(tiny_llama_dir)
