"""Fuse an adapter into its base model and write a plain Hugging Face model folder.

The folder (``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files) loads with ``transformers`` alone, with no ftzoo installed, and gives the
same logits as the base model with the adapter fused::

    python tools/export.py --adapter runs/gsm8k/adapter --output exported/gsm8k
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('exported/gsm8k')"

A GGUF base is dequantized on load; the written config carries no quantization settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from zoo.cli import one_line_errors
from zoo.inference import fuse_into, load_base, read_adapter, save_model_folder
from zoo.loading import load_tokenizer
from zoo.outputs import check_output


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
    loaded = read_adapter(adapter, allow_nonfinite=allow_nonfinite)
    model, info = load_base(base_model, {adapter: loaded}, dtype)
    fuse_into(model, loaded, what=f"adapter {adapter}")
    folder = save_model_folder(model, load_tokenizer(info.name_or_path), output, overwrite)
    print(f"Wrote {folder} ({loaded.method} adapter {adapter} fused into {info.name_or_path})")
    return folder


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    with one_line_errors():
        CLI(export, as_positional=False, args=args)


if __name__ == "__main__":
    main()
