"""Adapters after training: read them, load the base they belong to, check and fuse them.

Every tool starts here: an adapter folder names its method, config and base model, so
:func:`read_adapter` rebuilds the method (refusing one that is not installed),
:func:`load_base` loads the recorded base (refusing an adapter of another), and
:func:`checked_deltas` / :func:`fuse_into` name the adapter and the parameter when an
update does not fit, instead of a bare torch shape error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from pluggy import HookRelay
from torch import nn

from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter
from zoo.loading import ModelLoadError, load_model
from zoo.method import Method
from zoo.plugins import PluginError, hooks_of, method_from_config, method_hooks, method_name

FIT_ERRORS = (RuntimeError, KeyError, AttributeError, ValueError, IndexError)
"""What a method raises when an adapter does not fit a base (turned into :class:`AdapterError`)."""


def parse_named(specs: list[str], what: str = "adapter", by_parent: bool = False) -> dict[str, str]:
    """``["name=path", "path"]`` → ``{name: path}``; a bare path is named by its folder
    (``by_parent``: by the folder that holds it, for files such as ``run/predictions.jsonl``).

    Raises:
        ValueError: two entries get the same name, or a name is empty.
    """
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = (Path(spec).parent.name if by_parent else Path(spec).name), spec
        if not name or not path:
            raise ValueError(f"{what} {spec!r}: give it as name=path")
        if name in named:
            raise ValueError(f"two {what}s are named {name!r}; name them with name=path")
        named[name] = path
    return named


def read_adapter(path: str | Path, allow_nonfinite: bool = False) -> Adapter:
    """Load an adapter folder (:func:`zoo.load_adapter`; one holding NaN or infinity is refused
    unless ``allow_nonfinite``) and check that its method is installed."""
    adapter = load_adapter(path, allow_nonfinite=allow_nonfinite)
    hooks_for(adapter, what=f"adapter {path}")
    return adapter


def hooks_for(adapter: Adapter, what: str = "adapter") -> HookRelay:
    """The hook relay of the method that made ``adapter`` (built once per method and config)."""
    try:
        return hooks_of(adapter.method, adapter.config)
    except (PluginError, TypeError) as err:
        raise AdapterError(f"{what}: cannot rebuild its method {adapter.method!r}: {err}") from err


def load_base(
    base_model: str | None, adapters: dict[str, Adapter], dtype: str = "float32"
) -> tuple[nn.Module, BaseModelInfo]:
    """Load the base model the adapters were trained on, and refuse any adapter of another.

    Args:
        base_model: the base (alias, folder, ``.gguf``, hub id); default: the one the
            first adapter records.
        adapters: label → adapter.
        dtype: dtype of the base weights.

    Raises:
        AdapterError: an adapter belongs to another base model, or the base it records is
            not here (the message asks for ``--base_model``; a path is never sent to the hub).
    """
    recorded = base_model is None
    if recorded:
        if not adapters:
            raise ValueError("give the base model (no adapter to read it from)")
        base_model = next(iter(adapters.values())).base.name_or_path
    try:
        model = load_model(base_model, dtype).eval()
    except ModelLoadError as err:
        if not recorded:
            raise
        raise AdapterError(
            f"the adapter's base model cannot be loaded here: {err}\nPass --base_model <folder or id>"
        ) from err
    info = BaseModelInfo.of(model, base_model)
    for label, adapter in adapters.items():
        adapter.base.check_same(info, what=f"adapter {label}")
    return model, info


def checked_deltas(hooks: HookRelay, adapter: Adapter, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``ftzoo_adapter_deltas``, checked: every name is a base parameter of the same shape.

    Raises:
        AdapterError: the method fails on this base, or a delta does not fit it.
    """
    try:
        deltas = hooks.ftzoo_adapter_deltas(adapter=adapter, model=model)
    except AdapterError:
        raise
    except FIT_ERRORS as err:
        raise AdapterError(f"{what} does not fit the base model: {err}") from err
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise AdapterError(f"{what} changes {name!r}, which the base model does not have")
        if delta.shape != params[name].shape:
            raise AdapterError(
                f"{what} gives {name!r} shape {list(delta.shape)}; the base has {list(params[name].shape)}"
            )
    return deltas


def fuse_into(model: nn.Module, adapter: Adapter, what: str) -> None:
    """Fuse ``adapter`` into ``model`` in place (``ftzoo_fuse_adapter``, scale 1) and check
    that the model is still a plain base model (same parameter names and shapes).

    Raises:
        AdapterError: the adapter's deltas do not fit the base (named), or fusing changed
            the model's parameters.
    """
    hooks = hooks_for(adapter, what)
    checked_deltas(hooks, adapter, model, what)  # name a wrong key or shape before touching a weight
    before = {name: p.shape for name, p in model.named_parameters()}
    try:
        hooks.ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    except AdapterError:
        raise
    except FIT_ERRORS as err:
        raise AdapterError(f"{what} does not fit the base model: {err}") from err
    after = {name: p.shape for name, p in model.named_parameters()}
    if after != before:
        changed = sorted(set(after) ^ set(before)) or [n for n in after if after[n] != before[n]]
        raise AdapterError(f"fusing {what} did not leave a plain base model (changed: {changed[:5]})")


def load_for_evaluation(
    model: nn.Module, path: str | Path, method: Method | None, base: BaseModelInfo
) -> tuple[Method, HookRelay, Adapter]:
    """Load the adapter at ``path`` into ``model`` (``ftzoo_load_adapter``), for ``lightning
    validate/test/predict --model.adapter``. The method and its config are read from the
    adapter, so ``--model.method`` is not needed; one given (e.g. by a training recipe) that
    differs is set aside, and the run says so.

    Raises:
        AdapterError: the adapter belongs to another base model, or its method is not installed.
    """
    adapter = load_adapter(path)
    adapter.base.check_same(base, what=f"adapter {path}")
    configured = (method_name(method), method.config()) if method is not None else None
    if configured is not None and configured != (adapter.method, adapter.config):
        rank_zero_info(
            f"model.method {configured[0]!r} is set aside: adapter {path} was made by {adapter.method!r}, "
            "whose method and config are used"
        )
    try:
        method = method_from_config(adapter.method, adapter.config)
    except (PluginError, TypeError) as err:
        raise AdapterError(f"adapter {path}: cannot rebuild its method {adapter.method!r}: {err}") from err
    hooks = method_hooks(method)
    hooks.ftzoo_load_adapter(model=model, adapter=adapter)
    rank_zero_info(f"Loaded {adapter.method} adapter {path}")
    return method, hooks, adapter
