"""Writing an ftzoo LoRA adapter in PEFT's own folder format as well.

Beside ``adapter.json``/``adapter.safetensors`` an ftzoo LoRA adapter folder holds::

    adapter_config.json          PEFT's LoraConfig (peft_type LORA, task_type CAUSAL_LM,
                                 base_model_name_or_path = the base the adapter was trained on)
    adapter_model.safetensors    the same tensors under PEFT's keys:
                                 base_model.model.<module>.lora_A.weight, ...

so ``peft.PeftModel.from_pretrained(base, folder)``, vLLM/SGLang/TGI LoRA loading and
``PeftModel.load_adapter(folder, adapter_name=...)`` (mixed-adapter batches) read it as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from plugins.lora.config import peft_config, stored_rank
from zoo import Adapter

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def write_peft_files(adapter: Adapter, options: dict[str, Any], folder: str | Path) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``folder``.

    Args:
        adapter: a LoRA or DoRA adapter.
        options: the method's full options (``adapter.config`` plus ``use_dora``).
        folder: the adapter folder being written.
    """
    config = peft_config(
        options,
        options["target_modules"],  # the selection was matched from these by PEFT's rule
        rank=stored_rank(adapter.tensors),
        init_lora_weights=True,  # PiSSA/OLoRA adapters are stored converted to plain LoRA
        base_model_name_or_path=adapter.base.name_or_path,
        task_type="CAUSAL_LM",
    )
    config.save_pretrained(str(folder))
    tensors = {PEFT_PREFIX + name: t.detach().cpu().contiguous() for name, t in adapter.tensors.items()}
    save_file(tensors, str(Path(folder) / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
