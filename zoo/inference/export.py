"""Write a plain Hugging Face model folder (a base with an adapter fused in) atomically.

The folder loads with ``transformers`` alone: a GGUF base is dequantized on load, and the
written config carries no quantization settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from zoo.outputs import atomic_folder

CONFIG_LEFTOVERS = ("quantization_config", "auto_map")
"""Config keys a plain, dequantized model folder must not carry."""


def save_model_folder(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, output: str | Path, overwrite: bool = False
) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder, atomically, and strip
    what a plain dequantized checkpoint must not carry from its config."""
    _forget_gguf_quantizer(model)
    with atomic_folder(output, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _clean_config(tmp / "config.json")
    return Path(output)


def _forget_gguf_quantizer(model: nn.Module) -> None:
    """A GGUF base is dequantized on load, but transformers keeps its GGUF quantizer and
    refuses to save; the weights are plain tensors, so drop it. Other quantizers are refused.

    Raises:
        ValueError: the model holds weights quantized by another method.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    method = getattr(quantizer.quantization_config, "quant_method", None)
    method = getattr(method, "value", method)
    if method != "gguf":
        raise ValueError(f"the base model is quantized ({method}); export needs a base in float32, bfloat16 or float16")
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _clean_config(path: Path) -> None:
    config = json.loads(path.read_text())
    if any(key in config for key in CONFIG_LEFTOVERS):
        for key in CONFIG_LEFTOVERS:
            config.pop(key, None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
