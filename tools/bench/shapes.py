"""What the benchmarks share: the model shapes, the methods' configs, the targets, and
rewriting one section of ``docs/benchmarks.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from zoo.outputs import atomic_file

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
TOKEN_IDS = {"smollm2": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
"""LoRA's targets in LLM-Adapters and the S²FT paper's baselines."""

SPARSE_DENSITY = 0.01


def method_configs(lora_rank: int = 32, lora_dropout: float = 0.05) -> dict[str, tuple[str, dict[str, Any]]]:
    """Benchmark row → (registered method name, config). S²FT runs with its defaults, the
    paper's LLaMA-2 commonsense recipe (O heads 5.2 %, down channels 2 %, random)."""
    lora = {"r": lora_rank, "alpha": 2 * lora_rank, "dropout": lora_dropout, "target_modules": LORA_TARGETS}
    return {
        "full": ("full", {}),
        "lora": ("lora", lora),
        "lora_d0": ("lora", {**lora, "dropout": 0.0}),
        "lora_fp32": ("lora", {**lora, "adapter_dtype": "float32"}),
        "dora": ("dora", lora),
        "dora_fp32": ("dora", {**lora, "adapter_dtype": "float32"}),
        "sparse": ("sparse", {"density": SPARSE_DENSITY, "strategy": "random"}),
        "s2ft": ("s2ft", {}),
    }


TRAIN_TARGETS = [
    ("memory", "lora/peft_lora", 1.0, "ftzoo's LoRA ≤ raw peft's LoRA memory"),
    ("memory", "dora/peft_dora", 1.1, "ftzoo's DoRA ≤ 1.1× raw peft's DoRA memory"),
    ("memory", "s2ft/full", 1 / 3, "S²FT ≤ 1/3 of full FT's memory"),
    ("memory", "s2ft/lora", 0.90, "S²FT ≥ 10 % below LoRA's memory"),
    ("memory", "s2ft/best_lora", 0.90, "S²FT ≥ 10 % below the better LoRA row's memory (lora, peft_lora)"),
    ("memory", "s2ft/frozen", 1.05, "S²FT within 5 % of the frozen floor's memory"),
    ("memory", "s2ft_nf4/frozen_nf4", 1.10, "S²FT-nf4 within 10 % of the NF4 frozen floor's memory"),
    ("memory", "s2ft_nf4/qlora", 0.90, "S²FT-nf4 ≥ 10 % below QLoRA's memory"),
    ("memory", "s2ft_nf4/qlora_d0", 0.90, "S²FT-nf4 ≥ 10 % below QLoRA's (no dropout) memory"),
    ("time", "lora/peft_lora", 1.0, "ftzoo's LoRA no slower than raw peft's LoRA"),
    ("time", "s2ft/full", 1 / 1.8, "S²FT ≥ 1.8× faster than full FT"),
    ("time", "s2ft/lora", 0.90, "S²FT ≥ 10 % faster than LoRA"),
    ("time", "s2ft/best_lora", 0.90, "S²FT ≥ 10 % faster than the better LoRA row (lora, peft_lora)"),
    ("time", "s2ft/frozen", 1.05, "S²FT within 5 % of the frozen floor's time"),
]
"""(kind, ratio, upper limit, description): the training targets, as ratios of one run."""

SERVE_TARGETS = "switch LoRA/S²FT ≥ 5×; mixed-batch throughput S²FT/LoRA ≥ 1.2× and S²FT/fused ≥ 0.8×"


def llama_config(shape: dict[str, Any], layers: int, **extra: Any) -> LlamaConfig:
    """A Llama config of ``shape`` with ``layers`` decoder blocks."""
    return LlamaConfig(num_hidden_layers=layers, **{"max_position_embeddings": 4096, **shape, **extra})


def random_llama(config: LlamaConfig, dtype: torch.dtype, device: str | torch.device, seed: int) -> nn.Module:
    """A random Llama of ``config`` on ``device`` (``meta``: no weight allocated), every parameter frozen."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.requires_grad_(False)


def replace_docs_section(path: Path, title: str, section: str) -> None:
    """Replace (or append) the section headed ``title`` (e.g. ``"## Training"``) in the
    Markdown file ``path``, atomically; other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{title}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title) + 2)
        text = text[: start + 1] + section + ("" if end < 0 else "\n" + text[end + 1 :])
    with atomic_file(path) as handle:
        handle.write(text)
