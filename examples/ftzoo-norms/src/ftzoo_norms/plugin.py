"""``norms``: fine-tune only the normalisation weights (LayerNorm tuning) and, optionally,
the biases (BitFit), keeping every other weight frozen.

Normalisation scales are a tiny fraction of a model (SmolLM2-135M: 61 RMSNorm weights,
35k parameters, 0.03 %) yet move every hidden state; see Zhao et al., 2023, "Tuning
LayerNorm in Attention" and Ben Zaken et al., 2022, "BitFit".

The method trains base parameters in place, so it adds no parameters of its own (``prefix``
is empty) and its adapter holds the trained tensors under the base names. It implements
only what the core cannot guess; trainable parameters, loading, fusing and unfusing are
the core defaults (:mod:`zoo.defaults`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from zoo import Adapter, Method, check_trainable_parameters, hookimpl


class NormsOnly(Method):
    """Train the weights of normalisation layers (and optionally all biases).

    Args:
        norm_pattern: regular expression searched in parameter names to find norm weights
            (matches ``input_layernorm``, ``post_attention_layernorm`` and the final ``norm``).
        include_final_norm: also train the final norm before the LM head.
        biases: also train every bias (BitFit); Llama has none, Qwen2 has q/k/v biases.
    """

    name = "norms"
    prefix = ""

    def __init__(self, norm_pattern: str = r"norm\.weight$", include_final_norm: bool = True, biases: bool = False):
        self.norm_pattern = norm_pattern
        self.include_final_norm = include_final_norm
        self.biases = biases

    def _chosen(self, name: str) -> bool:
        if self.biases and name.endswith(".bias"):
            return True
        if not re.search(self.norm_pattern, name):
            return False
        return self.include_final_norm or ".layers." in name

    @hookimpl
    def ftzoo_select_parameters(self, model: nn.Module) -> list[str]:
        """The names of the parameters to train (JSON-able: a list of strings)."""
        chosen = [name for name, _ in model.named_parameters() if self._chosen(name)]
        if not chosen:
            raise ValueError(f"no parameter of {type(model).__name__} matches {self.norm_pattern!r}")
        return chosen

    @hookimpl
    def ftzoo_rewrite_model(self, model: nn.Module, selection: list[str]) -> None:
        """Unfreeze the chosen base parameters; nothing else changes."""
        check_trainable_parameters(model, selection, "norms")  # all checked before any is unfrozen
        for name in selection:
            model.get_parameter(name).requires_grad_(True)

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        """The core's default extract stored the trained tensors by name; the update is their
        difference from the base at hand."""
        deltas = {}
        for name, trained in adapter.tensors.items():
            base = model.get_parameter(name)
            deltas[name] = trained.to(base) - base.detach()
        return deltas
