"""Fuse an adapter into its base model and write a plain Hugging Face model folder.

The folder (``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files) loads with ``transformers`` alone, with no ftzoo installed, and gives the
same logits as the base model with the adapter fused::

    python tools/export.py --adapter runs/gsm8k/adapter --output exported/gsm8k
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('exported/gsm8k')"

A GGUF base is dequantized on load; the written config carries no quantization settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as `python tools/export.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn
from transformers import PreTrainedTokenizerBase

from tools.common import atomic_folder, check_output, hooks_for, load_base, read_adapter
from zoo.adapter import Adapter, AdapterError, check_finite
from zoo.loading import load_tokenizer

CONFIG_LEFTOVERS = ("quantization_config", "auto_map")
"""Config keys a plain, dequantized model folder must not carry."""


def export(
    adapter: str,
    output: str,
    base_model: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    overwrite: bool = False,
    allow_nonfinite: bool = False,
) -> Path:
    """Fuse ``adapter`` into its base model and write a Hugging Face model folder.

    Args:
        adapter: the adapter folder.
        output: the model folder to write (written atomically: complete or not at all).
        base_model: the base model; default: the one the adapter records.
        dtype: dtype of the written weights.
        overwrite: replace ``output`` if it exists.
        allow_nonfinite: export even if the adapter holds NaN or infinity (a NaN model).

    Returns:
        The written folder.

    Raises:
        AdapterError: the adapter is missing, corrupt, or belongs to another base model.
        NonFiniteError: the adapter holds NaN or infinity and ``allow_nonfinite`` is off.
        FileExistsError: ``output`` exists and ``overwrite`` is off.
    """
    check_output(output, overwrite, marker="config.json")
    loaded = read_adapter(adapter)
    if not allow_nonfinite:
        check_finite(loaded.tensors, what=f"adapter {adapter}")
    model, info = load_base(base_model, {adapter: loaded}, dtype)
    fuse_into(model, loaded, what=f"adapter {adapter}")
    folder = save_model_folder(model, load_tokenizer(info.name_or_path), output, overwrite)
    print(f"Wrote {folder} ({loaded.method} adapter {adapter} fused into {info.name_or_path})")
    return folder


def fuse_into(model: nn.Module, adapter: Adapter, what: str) -> None:
    """Fuse ``adapter`` into ``model`` in place (``ftzoo_fuse_adapter``, scale 1) and check
    that the model is still a plain base model (same parameter names and shapes)."""
    before = {name: p.shape for name, p in model.named_parameters()}
    try:
        hooks_for(adapter, what).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    except AdapterError:
        raise
    except (RuntimeError, KeyError, AttributeError, ValueError) as err:
        raise AdapterError(f"{what} does not fit the base model: {err}") from err
    after = {name: p.shape for name, p in model.named_parameters()}
    if after != before:
        changed = sorted(set(after) ^ set(before)) or [n for n in after if after[n] != before[n]]
        raise AdapterError(f"fusing {what} did not leave a plain base model (changed: {changed[:5]})")


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


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(export, as_positional=False)
