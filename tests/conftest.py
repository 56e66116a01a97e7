import os
from pathlib import Path

import pytest

from tiny_models import save_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (grouped-query attention) saved as a local model folder."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama-gqa")
