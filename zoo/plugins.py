"""Discovering methods and calling their hooks.

Every method, built-in or third-party, is registered the same way: an entry point in the
``ftzoo.methods`` group whose name is the method's registered name and whose object is its
:class:`zoo.Method` subclass::

    [project.entry-points."ftzoo.methods"]
    s2ft = "plugins.s2ft:S2FT"

A run calls hooks through :func:`method_hooks`, a plugin manager that holds the chosen
method and the core defaults, and nothing else (see :mod:`zoo.hookspecs`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from zoo import hookspecs
from zoo.defaults import CoreDefaults
from zoo.method import Method

ENTRY_POINT_GROUP = "ftzoo.methods"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its name, class and the distribution that provides it."""

    name: str
    cls: type[Method]
    distribution: str
    version: str


class PluginError(RuntimeError):
    """A method plugin is missing, misnamed or broken."""


_REGISTERED: dict[str, MethodEntry] = {}


def register_method(cls: type[Method], name: str | None = None) -> None:
    """Register a method class by hand (for notebooks and tests; packages use entry points)."""
    name = name or cls.name
    if not name:
        raise PluginError(f"{cls.__qualname__} has no `name`; give one to register it.")
    _REGISTERED[name] = MethodEntry(name, cls, "<registered at runtime>", "")
    available_methods.cache_clear()


CORE_DISTRIBUTION = "ftzoo"
"""The distribution of this package: its built-in methods keep their names if a third party reuses one."""


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point in ``ftzoo.methods`` that was skipped: it failed to load, names no
    :class:`zoo.Method` subclass, or reuses a name already registered."""

    name: str
    value: str
    distribution: str
    version: str
    error: str

    def describe(self) -> str:
        source = f"{self.distribution} {self.version}".strip()
        return f"method plugin {self.name!r} ({self.value}, from {source}): {self.error}"


_BROKEN: dict[str, BrokenPlugin] = {}


@functools.cache
def available_methods() -> dict[str, MethodEntry]:
    """Every method of the ``ftzoo.methods`` entry point group that loads, by registered name.

    A broken plugin (see :func:`broken_plugins`) is skipped with a warning that names its
    package, entry point and error, so it breaks neither the other methods nor the tools.
    """
    found: dict[str, MethodEntry] = {}
    _BROKEN.clear()
    # ftzoo's own entry points first, so that a third party reusing a built-in name is the one skipped
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: _dist(ep)[0] != CORE_DISTRIBUTION)
    for ep in eps:
        dist, version = _dist(ep)
        try:
            cls = ep.load()
        except Exception as err:  # noqa: BLE001  # a broken third-party plugin is reported, and breaks nothing else
            error = f"failed to load: {type(err).__name__}: {err}"
        else:
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                error = f"names {cls!r}, not a zoo.Method subclass"
            elif ep.name in found and found[ep.name].cls is not cls:
                error = f"reuses the name {ep.name!r}, already registered by {found[ep.name].distribution}"
            else:
                found[ep.name] = MethodEntry(ep.name, cls, dist, version)
                continue
        plugin = BrokenPlugin(ep.name, ep.value, dist, version, error)
        _BROKEN.setdefault(ep.name if ep.name not in found else f"{ep.name} ({dist})", plugin)
        log.warning("ftzoo: skipped %s", plugin.describe())
    found.update(_REGISTERED)
    return found


def broken_plugins() -> dict[str, BrokenPlugin]:
    """The entry points :func:`available_methods` skipped, by registered name (a reused
    name as ``"name (distribution)"``); ``python -m zoo plugins`` lists them."""
    available_methods()
    return dict(_BROKEN)


def _dist(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist else ("?", "")


def method_class(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    methods = available_methods()
    if name not in methods:
        raise PluginError(unknown_method_message(name))
    return methods[name].cls


def resolve_method_class(reference: str) -> type[Method]:
    """The method class a registered name (``lora``) or a ``module.Class`` path names, as
    ``--model.method`` takes it; for tools that check a method before they run ``fit``.

    Raises:
        PluginError: no installed method has that name, or the path names no :class:`Method` subclass.
    """
    if reference in available_methods() or "." not in reference:
        return method_class(reference)
    module, _, name = reference.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise PluginError(f"{reference}: cannot import it ({type(err).__name__}: {err})") from err
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"{reference} is not a zoo.Method subclass")
    return cls


def unknown_method_message(name: str) -> str:
    """Say that ``name`` is no installed method: list them, and the closest name if any."""
    methods = available_methods()
    if name in broken_plugins():
        return f"the {broken_plugins()[name].describe()}; fix or uninstall that package (python -m zoo plugins)"
    known = ", ".join(sorted(methods)) or "none"
    close = difflib.get_close_matches(name, list(methods), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"no method named {name!r} is installed.{hint} Installed methods: {known} (python -m zoo plugins lists "
        "them with their packages). Install the plugin package that provides it, or give its class path."
    )


def is_method_reference(value: str) -> bool:
    """Whether ``value`` can name a method class: a registered name, a dotted class path, or
    the short name of a loaded :class:`Method` subclass (which jsonargparse resolves)."""
    if value in available_methods() or "." in value:
        return True
    pending, short = [Method], set()
    while pending:
        cls = pending.pop()
        short.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return value in short


def method_name(method: Method) -> str:
    """The registered name of ``method``'s class (its ``name`` attribute if unregistered)."""
    for entry in available_methods().values():
        if entry.cls is type(method):
            return entry.name
    return type(method).name or type(method).__qualname__


def method_from_config(name: str, config: dict[str, Any]) -> Method:
    """Rebuild a method from the name and config stored in a checkpoint or adapter."""
    return method_class(name)(**config)


REQUIRED_HOOKS = ("ftzoo_select_parameters", "ftzoo_rewrite_model", "ftzoo_adapter_deltas")
"""Hooks every method implements: without them it cannot train, or its adapter cannot be used."""


HOOKIMPL_MARK = f"{hookspecs.PROJECT}_impl"
"""The attribute pluggy's ``HookimplMarker`` sets on a marked function."""


def check_marked(method: Method) -> None:
    """Refuse a function named like a hook but not marked with ``@hookimpl`` (pluggy would
    ignore it silently, and e.g. the selection would be ``None``).

    Raises:
        PluginError: naming the functions to decorate.
    """
    cls, who, marker = type(method), f"method {type(method).__qualname__}", HOOKIMPL_MARK
    unmarked = sorted(
        name for name in dir(cls)
        if name.startswith("ftzoo_") and callable(getattr(cls, name)) and not hasattr(getattr(cls, name), marker)
    )  # fmt: skip
    if unmarked:
        raise PluginError(
            f"{who}: {', '.join(unmarked)} {'is' if len(unmarked) == 1 else 'are'} not marked with @hookimpl, so "
            "ftzoo would never call them; decorate each with `@hookimpl` (from zoo import hookimpl)"
        )


def check_method(method: Method) -> None:
    """Check a method as it is loaded, so that its author learns at once what to change.

    Raises:
        PluginError: a required hook is missing, the config cannot rebuild the method
            (an ``__init__`` argument not stored as an attribute of the same name), or an
            argument cannot be stored as JSON (a set, a tensor, a path object).
    """
    cls, who, marker = type(method), f"method {type(method).__qualname__}", HOOKIMPL_MARK
    missing = [name for name in REQUIRED_HOOKS if not hasattr(getattr(cls, name, None), marker)]
    if missing:
        raise PluginError(
            f"{who} does not implement {', '.join(missing)}; every method implements "
            f"{', '.join(REQUIRED_HOOKS)} (see zoo/hookspecs.py and docs/adapters.md)"
        )
    try:
        config = method.config()
        cls(**config)
    except Exception as err:  # the author's constructor: any error means the config does not rebuild it
        raise PluginError(
            f"{who}: its config cannot rebuild it ({type(err).__name__}: {err}); store every __init__ argument "
            "as an attribute of the same name (self.x = x), since checkpoints and adapters rebuild the method "
            "from them"
        ) from err
    for name, value in config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:  # refused now, not when the adapter is written after training
            raise PluginError(
                f"{who}: init argument {name}={value!r} is a {type(value).__name__}, which cannot be stored as "
                f"JSON ({err}); checkpoints and adapters record the config as JSON: give lists, dicts with string "
                "keys, strings, numbers, booleans or None (e.g. a list instead of a set)"
            ) from err


def method_hooks(method: Method | None) -> pluggy.HookRelay:
    """A hook relay on which only ``method`` (and the core defaults) answer.

    Build it once per method and keep it (the module does; tools use :func:`hooks_of`).

    Raises:
        PluginError: the method has an unmarked hook (:func:`check_marked`), implements a
            hook that is not declared (a misspelled hook name), takes an argument the hook
            does not pass, or fails :func:`check_method`.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(CoreDefaults(manager.hook), name="ftzoo-core-defaults")
    if method is not None:
        check_marked(method)
        try:
            manager.register(method, name=f"method:{type(method).__qualname__}")
            manager.check_pending()
        except pluggy.PluginValidationError as err:
            raise PluginError(f"method {type(method).__qualname__}: {err}") from err
        check_method(method)
    return manager.hook


@functools.lru_cache(maxsize=64)
def _hooks_of(cls: type[Method], config_json: str) -> pluggy.HookRelay:
    return method_hooks(cls(**json.loads(config_json)))


def hooks_of(name: str, config: dict[str, Any]) -> pluggy.HookRelay:
    """The hook relay of the method ``name`` with ``config`` (as stored in an adapter), built
    once per method class and config: tools ask for it on every adapter they read, fuse or serve.

    Raises:
        PluginError: no method of that name is installed.
        TypeError: the config does not fit the method's ``__init__``.
    """
    cls = method_class(name)
    try:
        key = json.dumps(config, sort_keys=True)
    except TypeError:  # not JSON-able (an adapter built in memory): build it uncached
        return method_hooks(cls(**config))
    return _hooks_of(cls, key)
