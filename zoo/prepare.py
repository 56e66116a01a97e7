"""The one way a method is prepared to train: freeze → select → rewrite → trainable.

The LightningModule (:mod:`zoo.module`), the benchmarks (``tools/bench``) and the contract
suite (:mod:`zoo.testing`) all go through these functions, so a method trains in a
benchmark exactly as it does in ``lightning fit``. Each step checks what the method gave
back at once, with a message that says what the method's author must change, instead of
failing at the end of fit (a selection that cannot be stored) or with a vague refusal
(parameters left frozen).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from pluggy import HookRelay
from torch import nn

from zoo.adapter import Adapter, BaseModelInfo
from zoo.method import Method
from zoo.plugins import PluginError, method_hooks, method_name
from zoo.quantization import check_method, quantization_of

Batches = Callable[[], Iterator[dict[str, torch.Tensor]]]


@dataclass
class Prepared:
    """A model rewritten by a method, ready for an optimizer."""

    method: Method
    hooks: HookRelay
    model: nn.Module
    selection: Any
    trainable: list[tuple[str, nn.Parameter]]


def freeze(model: nn.Module) -> nn.Module:
    """Every base parameter frozen: a method unfreezes or adds only what it trains."""
    return model.requires_grad_(False)


def select(hooks: HookRelay, method: Method, model: nn.Module, calibration_batches: Batches | None, seed: int) -> Any:
    """``ftzoo_select_parameters``, checked: the selection must be storable (JSON).

    Raises:
        PluginError: the selection cannot be written to a checkpoint or adapter.
    """
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=calibration_batches, seed=seed)
    check_selection(selection, method)
    return selection


def check_selection(selection: Any, method: Method) -> None:
    """Refuse a selection that a checkpoint or adapter cannot store and give back unchanged.

    Raises:
        PluginError: naming the first value that is not JSON (a set, a tensor, a tuple).
    """
    problem = _not_json(selection, "selection")
    if problem is not None:
        raise PluginError(
            f"method {method_name(method)!r}: ftzoo_select_parameters returned a selection that cannot be stored: "
            f"{problem}. Return only dicts with string keys, lists, strings, numbers, booleans and None "
            "(e.g. sorted(a_set), tensor.tolist()); it is written to checkpoints and adapters as JSON."
        )


def _not_json(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _not_json(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, v in value.items():
            if not isinstance(key, str):
                return f"{where} has a key {key!r} of type {type(key).__name__} (keys must be strings)"
            if (p := _not_json(v, f"{where}[{key!r}]")) is not None:
                return p
        return None
    return f"{where} is a {type(value).__name__}"


def rewrite(hooks: HookRelay, method: Method, model: nn.Module, selection: Any) -> list[tuple[str, nn.Parameter]]:
    """``ftzoo_rewrite_model`` then ``ftzoo_trainable_parameters``, checked.

    Returns:
        The ``(name, parameter)`` pairs the optimizer updates.

    Raises:
        PluginError: the method chose something but left nothing trainable, or named a
            parameter it added without its ``prefix``.
    """
    base = {id(p) for p in model.parameters()}  # a wrapper may rename a base parameter, never copy it
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    trainable = hooks.ftzoo_trainable_parameters(model=model)
    check_prefix(method, [name for name, p in trainable if id(p) not in base])
    if not trainable:
        raise PluginError(
            f"method {method_name(method)!r} selected {_describe(selection)}, but after ftzoo_rewrite_model no "
            "parameter has requires_grad=True: the rewrite must call requires_grad_(True) on the parameters it "
            "trains (or the method must implement ftzoo_trainable_parameters)"
        )
    return trainable


def check_prefix(method: Method, added: list[str]) -> None:
    """The core finds a method's own parameters by name: each one it adds must contain its
    :attr:`~zoo.Method.prefix` (a method that only unfreezes base parameters adds none).

    Raises:
        PluginError: naming the parameters and the prefix.
    """
    if not added:
        return
    prefix = type(method).prefix
    wrong = [name for name in added if not prefix or prefix not in name]
    if wrong:
        raise PluginError(
            f"method {method_name(method)!r} added trainable parameters {wrong[:3]} whose names do not contain its "
            f"prefix {prefix!r}: set `prefix` on the class to a substring of the names of the parameters it adds "
            "(as lora_ and s2ft_ do) and name them so"
        )


def _describe(selection: Any) -> str:
    if selection is None:
        return "nothing (its selection is None)"
    text = json.dumps(selection, default=str)
    return f"{text[:80]}..." if len(text) > 80 else text


def prepare(
    model: nn.Module,
    method: Method,
    calibration_batches: Batches | None = None,
    seed: int = 0,
    selection: Any = None,
) -> Prepared:
    """Freeze ``model`` and let ``method`` select (unless ``selection`` is given) and rewrite.

    Args:
        model: a plain base model (changed in place).
        method: the method.
        calibration_batches: training batches for methods that score parameters.
        seed: the run's seed, for methods that choose at random.
        selection: a stored selection (a checkpoint's, an adapter's) to rebuild instead.
    """
    hooks = method_hooks(method)
    check_method(hooks, method_name(method), quantization_of(model))  # before anything changes
    freeze(model)
    if selection is None:
        selection = select(hooks, method, model, calibration_batches, seed)
    trainable = rewrite(hooks, method, model, selection)
    return Prepared(method, hooks, model, selection, trainable)


def extract_adapter(
    hooks: HookRelay, method: Method, model: nn.Module, selection: Any, base: BaseModelInfo, info: dict[str, Any]
) -> Adapter:
    """The trained update as an :class:`Adapter` in base coordinates (``ftzoo_extract_adapter``),
    its tensors copied to the CPU (gathered FSDP parameters live only inside the gathering context)."""
    tensors = hooks.ftzoo_extract_adapter(model=model, selection=selection)
    tensors = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
    return Adapter(method_name(method), method.config(), selection, base, tensors, info)


def plain_view(model: nn.Module) -> nn.Module:
    """A tree of empty modules holding ``model``'s parameters under their names (the same
    tensors, no copy): the plain base as it was before a rewrite, for hooks that read base
    weights by name (``ftzoo_adapter_deltas``) after the model itself was rewritten."""
    root = nn.Module()
    for name, param in model.named_parameters(remove_duplicate=False):
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, param)
    root.config = getattr(model, "config", None)
    return root


START_TOLERANCE = 1e-3
"""How large, relative to the base weight's largest entry, a delta of the untrained rewrite may
be (rounding: DoRA's magnitudes recompute the weight); ``16 eps`` of the dtype if larger."""


def check_untrained_deltas(
    hooks: HookRelay, method: Method, model: nn.Module, selection: Any, base: BaseModelInfo, plain: nn.Module
) -> None:
    """Check ``ftzoo_adapter_deltas`` on the adapter of the untrained rewrite, at the start of fit.

    Before any step the rewritten model computes what the base does, so every delta must be
    zero, of a base parameter, of its shape. A method whose deltas are the trained values
    instead of differences trains to the end, and its export, merge and serving build a
    wrong model: it is refused here, before the first step.

    Args:
        hooks, method, selection: the method being trained.
        model: the rewritten, untrained model.
        base: the base model's identity.
        plain: :func:`plain_view` of the base taken before the rewrite.

    Raises:
        PluginError: naming the hook, the parameter and what is wrong.
    """
    who = f"method {method_name(method)!r}: ftzoo_adapter_deltas"
    adapter = extract_adapter(hooks, method, model, selection, base, {})
    with torch.no_grad():
        try:
            deltas = hooks.ftzoo_adapter_deltas(adapter=adapter, model=plain)
        except Exception as err:  # the author's code: any failure on its own fresh adapter is the hook's
            raise PluginError(f"{who} fails on the adapter of the untrained rewrite: {type(err).__name__}: {err}") from err
        params = dict(plain.named_parameters(remove_duplicate=False))
        for name, delta in (deltas or {}).items():
            if name not in params:
                raise PluginError(f"{who} changes {name!r}, which the base model does not have")
            weight = params[name]
            if delta.shape != weight.shape:
                raise PluginError(f"{who} gives {name!r} shape {list(delta.shape)}; the base has {list(weight.shape)}")
            largest, scale = float(delta.abs().max()) if delta.numel() else 0.0, float(weight.abs().max())
            eps = torch.finfo(weight.dtype).eps if weight.is_floating_point() else 0.0
            if not largest <= max(START_TOLERANCE, 16 * eps) * scale + 1e-12:
                raise PluginError(
                    f"{who} gives {name!r} a difference of up to {largest:.4g} before any training step (the base "
                    f"weight's largest entry is {scale:.4g}); it must return fused - base weights, zero for the "
                    "untrained rewrite, not the weights themselves: export, merge and serving would build a wrong "
                    "model from it"
                )


def calibration_batches(datamodule: Any, count: int, model: nn.Module) -> Batches:
    """What a method scoring parameters calls: the first ``count`` training batches, on the model's
    device (the CPU under FSDP, before it shards the model). No data is loaded until it is called."""

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        if datamodule is None:
            raise RuntimeError("this method scores parameters on training batches, but no data module is attached")
        device = next(model.parameters()).device
        for batch in islice(iter(datamodule.train_dataloader()), count):
            yield {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    return batches
