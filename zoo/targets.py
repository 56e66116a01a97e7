"""Choosing which modules of a model a method adapts, by name, and refusing those it cannot train.

The matching rule is PEFT's (``peft.tuners.tuners_utils.check_target_module_exists``), so
that a ``target_modules`` value means the same in every ftzoo method and in an exported
PEFT adapter:

* a list of names: a module matches when its full name equals an entry or ends with
  ``"." + entry`` (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``);
* a string: a regular expression that must match the full module name.

Methods check every module or parameter they will change (:func:`check_trainable_modules`,
:func:`check_trainable_parameters`) before changing any, so a quantized or integer weight is
refused with its name and the model is left exactly as it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
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
        UnsupportedWeightError: a module with a matching name holds weights of another kind
            (a quantized layer), which would otherwise be skipped silently.
    """
    named = [(name, m) for name, m in model.named_modules() if matches(name, target_modules)]
    found = [name for name, module in named if isinstance(module, kinds)]
    quantized = [
        name
        for name, m in named
        if not isinstance(m, kinds) and hasattr(m, "weight") and weight_problem(name, getattr(m, "weight"))
    ]
    check_trainable_modules(model, quantized, "the method")
    if not found:
        raise ValueError(
            f"target_modules={target_modules!r} matches no {'/'.join(k.__name__ for k in kinds)} module of "
            f"{type(model).__name__}"
        )
    return found


# ---------------------------------------------------------------------------------------
# refusing what a method cannot train, before anything changes
# ---------------------------------------------------------------------------------------

TRAINABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Weight dtypes a method may train, permute or wrap; integer, quantized and float8 weights
cannot take a gradient or an in-place float update."""


class UnsupportedWeightError(ValueError):
    """A target holds weights a method cannot train (quantized, integer, float8, not a tensor)."""


def weight_problem(name: str, value: object) -> str | None:
    """Why the tensor ``value`` (called ``name``) cannot be trained, or ``None`` if it can."""
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, not a tensor (a quantized or packed layer)"
    if value.is_quantized:
        return f"{name} is a quantized tensor ({value.dtype})"
    if value.dtype not in TRAINABLE_DTYPES:
        return f"{name} has dtype {value.dtype}"
    return None


def check_trainable_modules(model: nn.Module, names: Iterable[str], what: str) -> None:
    """Refuse, before a method touches any of them, target modules it cannot rewrite.

    Every target must be a plain ``nn.Linear`` (or subclass) whose weight and bias are
    floating-point tensors of :data:`TRAINABLE_DTYPES`. All targets are checked first so
    that a refusal leaves the model exactly as it was.

    Args:
        model: the model about to be rewritten.
        names: full module names of every module the rewrite will change.
        what: the method, for the message (``"S²FT"``).

    Raises:
        UnsupportedWeightError: listing every target that cannot be trained.
    """
    problems = []
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            problems.append(f"{name} is a {type(module).__module__}.{type(module).__qualname__}, not a torch nn.Linear")
            continue
        for attr in ("weight", "bias"):
            value = getattr(module, attr)
            if value is not None or attr == "weight":
                problems.append(weight_problem(f"{name}.{attr}", value))
    _raise_if_any([p for p in problems if p], what)


def check_trainable_parameters(model: nn.Module, names: Iterable[str], what: str) -> None:
    """As :func:`check_trainable_modules`, for parameters trained in place (by full name).

    Raises:
        UnsupportedWeightError: listing every parameter that cannot be trained.
    """
    values = dict(model.named_parameters())
    problems = [weight_problem(name, values[name] if name in values else _attribute(model, name)) for name in names]
    _raise_if_any([p for p in problems if p], what)


def packed_weights(model: nn.Module) -> list[str]:
    """``<module>.weight`` of every module whose weight is not a tensor (torch.ao quantized
    layers keep packed weights behind a method): no parameter name would reveal them."""
    return [f"{name}.weight" for name, m in model.named_modules() if callable(getattr(m, "weight", None))]


def _attribute(model: nn.Module, name: str) -> object:
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr, None)


def _raise_if_any(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    raise UnsupportedWeightError(
        f"{what} cannot train this model, which is left unchanged: {shown}. Load the base in float32, bfloat16 or "
        "float16 (--model.dtype); quantized and integer weights are not supported"
    )
