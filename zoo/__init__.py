"""ftzoo core: the LightningModule, hook specifications, plugin manager and adapter format."""

from zoo import console

console.quiet()  # before peft imports bitsandbytes, which logs at import (zoo.console)

from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter, save_adapter
from zoo.hookspecs import hookimpl
from zoo.method import Method

__all__ = [
    "Adapter",
    "AdapterError",
    "BaseModelInfo",
    "Method",
    "hookimpl",
    "load_adapter",
    "save_adapter",
]
