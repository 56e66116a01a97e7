"""LoRA and DoRA, backed by PEFT (``lora`` and ``dora`` in ``ftzoo.methods``)."""

from plugins.lora.plugin import DoRA, LoRA

__all__ = ["DoRA", "LoRA"]
