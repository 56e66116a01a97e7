"""The small contract every fine-tuning method fulfils.

A method is a plain class whose ``__init__`` arguments are its configuration (so that
LightningCLI can build it from ``class_path``/``init_args``) and whose hook
implementations are instance methods marked with :data:`zoo.hookimpl`::

    from zoo import Method, hookimpl

    class NormsOnly(Method):
        name = "norms"      # the entry point name in ``ftzoo.methods``
        prefix = ""         # optional: what the names of parameters the method adds contain

        def __init__(self, include_final_norm: bool = True):
            self.include_final_norm = include_final_norm

        @hookimpl
        def ftzoo_select_parameters(self, model): ...

        @hookimpl
        def ftzoo_rewrite_model(self, model, selection): ...

        @hookimpl
        def ftzoo_adapter_deltas(self, adapter, model): ...

The three hooks shown are required (:data:`zoo.plugins.REQUIRED_HOOKS`). Every ``__init__``
argument must be stored under an attribute of the same name, so that :meth:`Method.config`
can record it in checkpoints and adapters and :func:`zoo.plugins.method_from_config` can
rebuild the method later. Both are checked when the method is loaded
(:func:`zoo.plugins.check_method`).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar


class Method:
    """Base class of fine-tuning methods (see the module docstring)."""

    name: ClassVar[str] = ""
    """Registered name: the entry point name in the ``ftzoo.methods`` group."""
    prefix: ClassVar[str] = ""
    """Substring of the names of the parameters the method adds (``"lora_"``, ``"s2ft_"``);
    ``""`` for a method that only unfreezes base parameters. The core checks it after every
    rewrite (:func:`zoo.prepare.check_prefix`)."""

    def config(self) -> dict[str, Any]:
        """The ``__init__`` arguments as a JSON-able dict (read back from attributes)."""
        config = {}
        for arg in inspect.signature(type(self).__init__).parameters.values():
            if arg.name == "self" or arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD):
                continue
            if not hasattr(self, arg.name):
                raise TypeError(
                    f"{type(self).__qualname__}.__init__ argument {arg.name!r} is not stored "
                    f"as self.{arg.name}; ftzoo records a method's config from its attributes."
                )
            config[arg.name] = getattr(self, arg.name)
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
