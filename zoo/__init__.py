"""ftzoo core: the LightningModule, hook specifications, plugin manager and adapter format.

What a method plugin implements against is imported from here, as an outside plugin does
(``from zoo import Method, hookimpl, Adapter, MergeOptions, find_modules``): the contract
(:class:`Method`, :data:`hookimpl`, the adapter types, the merge options every
``ftzoo_merge_adapters`` receives, the low-rank and sparse parts a serving delta may offer) and
the helpers methods share (targets, quantized layers).
"""

from zoo import console

console.quiet()  # before peft imports bitsandbytes, which logs at import (zoo.console)

from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter, save_adapter
from zoo.hookspecs import hookimpl
from zoo.merging import MERGED_METHOD
from zoo.merging.combine import How, MergeOptions
from zoo.method import Method
from zoo.quantization import dequantized_weight, is_quantized_linear, layer_quantization, quantization_of, weight_shape
from zoo.serving import LowRankParts, SparseParts
from zoo.targets import (
    UnsupportedWeightError,
    check_trainable_modules,
    check_trainable_parameters,
    find_modules,
    packed_weights,
)

__all__ = [
    "MERGED_METHOD",
    "Adapter",
    "AdapterError",
    "BaseModelInfo",
    "How",
    "LowRankParts",
    "MergeOptions",
    "Method",
    "SparseParts",
    "UnsupportedWeightError",
    "check_trainable_modules",
    "check_trainable_parameters",
    "dequantized_weight",
    "find_modules",
    "hookimpl",
    "is_quantized_linear",
    "layer_quantization",
    "load_adapter",
    "packed_weights",
    "quantization_of",
    "save_adapter",
    "weight_shape",
]
