"""Choosing which modules of a model a method adapts, by name.

The matching rule is PEFT's (``peft.tuners.tuners_utils.check_target_module_exists``), so
that a ``target_modules`` value means the same in every ftzoo method and in an exported
PEFT adapter:

* a list of names: a module matches when its full name equals an entry or ends with
  ``"." + entry`` (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``);
* a string: a regular expression that must match the full module name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn


def matches(name: str, target_modules: str | Sequence[str]) -> bool:
    """Whether the module called ``name`` is one of ``target_modules`` (see module docstring)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in target_modules)


def find_modules(
    model: nn.Module, target_modules: str | Sequence[str], kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> list[str]:
    """Names of the modules of type ``kinds`` that match ``target_modules``, in model order.

    Raises:
        ValueError: nothing matches (a misspelled target should fail loudly, not train nothing).
    """
    found = [
        name for name, module in model.named_modules() if isinstance(module, kinds) and matches(name, target_modules)
    ]
    if not found:
        raise ValueError(
            f"target_modules={target_modules!r} matches no {'/'.join(k.__name__ for k in kinds)} module of "
            f"{type(model).__name__}"
        )
    return found
