"""``merged``: the method of adapters made by ``tools/merge.py``.

A merged adapter holds dense updates keyed by base parameter name (``fused - base``), so
merging adapters of any methods gives an ordinary adapter: it fuses, unfuses, serves,
exports and merges again through the core defaults. It is not trained: the merge recipe
(sources, method, options, overlap) is kept in ``Adapter.info`` and the selection lists the
changed parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo import MERGED_METHOD, Adapter, AdapterError, Method, hookimpl


class MergedDeltas(Method):
    """Dense updates from ``tools/merge.py`` (not trainable)."""

    name = MERGED_METHOD
    prefix = "merged_"

    @hookimpl
    def ftzoo_select_parameters(self) -> Any:
        raise RuntimeError(
            "the 'merged' method holds the result of tools/merge.py and does not train; "
            "fine-tune with another method, or evaluate the merged adapter with --model.adapter"
        )

    @hookimpl
    def ftzoo_rewrite_model(self) -> None:
        self.ftzoo_select_parameters()  # the same refusal: nothing to rewrite for training

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
        deltas = {}
        for name, delta in adapter.tensors.items():
            try:
                param = model.get_parameter(name)
            except AttributeError as err:
                raise AdapterError(f"merged adapter changes {name!r}, which the base model does not have") from err
            if delta.shape != param.shape:
                raise AdapterError(
                    f"merged adapter gives {name!r} shape {list(delta.shape)}; the base has {list(param.shape)}"
                )
            deltas[name] = delta.to(device=param.device, dtype=param.dtype)
        return deltas

    @hookimpl
    def ftzoo_merge_adapters(self) -> None:
        return None  # already dense deltas: the merge tool combines them directly

