"""ftzoo's model for lm-evaluation-harness: one base model, any ftzoo adapters switched in place.

:class:`FtzooLM` is lm-eval's own Hugging Face model (``HFLM``) over a base model that ftzoo
loaded (an alias, a GGUF file, a folder), so ``loglikelihood``, ``loglikelihood_rolling`` and
``generate_until`` are lm-eval's code, tokenisation, batching and all: a number from the bridge
is the number lm-eval's ``hf`` model gives on the same weights. Adapters of any method are fused
into those weights and unfused again by :class:`zoo.inference.AdapterSwitcher`; HFLM keeps no
state that depends on the weights between calls (its logits cache lives inside one call), so
after :meth:`FtzooLM.activate` every request sees the newly fused model.

Registered as lm-eval's model ``ftzoo`` once this module is imported::

    import zoo.harness.model  # noqa: F401
    lm_eval.simple_evaluate(model="ftzoo", model_args="adapter=runs/s2ft/adapter", tasks=[...])

and on lm-eval's command line through ``python -m zoo.harness`` (which imports it first).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from zoo.inference import BASE, AdapterSwitcher, load_base, parse_named, pick_device, read_adapter
from zoo.loading import load_tokenizer

DEFAULT_BASE = "smollm2-135m"
"""The base model when neither a base nor an adapter is given."""

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    """``pick_device``, but a GPU that is not there means the CPU, as lm-eval's ``hf`` model takes it
    (its command line passes ``cuda:0`` unless told ``--device``)."""
    device = pick_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s is not available; evaluating on the CPU", name)
        return torch.device("cpu")
    return device


@register_model("ftzoo")
class FtzooLM(HFLM):
    """lm-eval's ``HFLM`` over an ftzoo base model with adapters switched in place.

    Args:
        adapter: an adapter folder (``path`` or ``name=path``), switched in at the start.
        adapters: more adapters, name → folder, registered but not switched in.
        base_model: the base model; default: the one the first adapter records, else
            ``smollm2-135m``.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ... (a missing GPU means the CPU).
        batch_size: requests per forward pass (lm-eval's: an int, ``auto`` or ``auto:N``).
        kwargs: HFLM's other arguments (``max_length``, ``add_bos_token``, ``softmax_dtype``, ...).
    """

    def __init__(
        self,
        adapter: str | None = None,
        adapters: dict[str, str] | None = None,
        base_model: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        device: str = "auto",
        batch_size: int | str = 1,
        **kwargs: Any,
    ) -> None:
        first = parse_named([adapter]) if adapter else {}
        self.adapter_paths = {**first, **(adapters or {})}
        if BASE in self.adapter_paths:
            raise ValueError(f"the name {BASE!r} is the base model; name the adapter otherwise")
        loaded = {name: read_adapter(path) for name, path in self.adapter_paths.items()}
        model, info = load_base(base_model or (None if loaded else DEFAULT_BASE), loaded, dtype)
        model.to(_device(device))
        super().__init__(pretrained=model, tokenizer=load_tokenizer(info.name_or_path), batch_size=batch_size, **kwargs)
        self.base_info = info
        self.methods = {name: one.method for name, one in loaded.items()}
        self.switcher = AdapterSwitcher(self.model, info)
        for name, one in loaded.items():
            self.switcher.add(name, one)
        self.activate(next(iter(first), BASE))

    @property
    def active(self) -> str:
        """The adapter fused now, or ``base``."""
        return self.switcher.active or BASE

    def activate(self, name: str) -> float:
        """Fuse adapter ``name`` (``base``: none) in place of the active one; the seconds it took."""
        return self.switcher.activate(name)

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model: the base, the active adapter and its method.

        Replaces HFLM's, which asks the Hugging Face Hub for a revision hash of ``pretrained``.
        """
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
            "base_model": self.base_info.name_or_path,
            "adapter": self.active,
            "adapter_path": self.adapter_paths.get(self.active),
            "adapter_method": self.methods.get(self.active),
        }
