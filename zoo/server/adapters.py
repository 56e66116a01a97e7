"""The adapters a server answers for, known from their metadata (``adapter.json``) alone.

The front end needs of an adapter only its name, folder, template and system prompt (to
render prompts) and whether it belongs to the served base; the decoding loop reads its
tensors (:mod:`zoo.server.engine`). Each registration gets its own ``key``, the name the
decoding loop loads it under: an adapter unloaded and loaded again under the same name while
requests of the old one are still decoding is another key, so those requests finish on the
adapter they started with.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from zoo.adapter import AdapterError, BaseModelInfo, is_adapter_folder, load_adapter_metadata
from zoo.inference import Template, adapter_system_prompt, adapter_template, hooks_for

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""An adapter name that ``adapter_folder`` may resolve: one path component, no ``..``."""


@dataclass(frozen=True)
class AdapterEntry:
    """One served adapter, as its metadata describes it."""

    name: str
    key: str
    """The name the decoding loop holds it under (unique per registration)."""
    path: str
    template: Template
    system: str | None
    method: str


class AdapterRegistry:
    """Name → adapter, for one base model (see the module docstring).

    Args:
        base_name: the ``model`` name of the base itself (no adapter may take it).
        base: the served base's identity (adapters of another base are refused); ``None``:
            not checked (a registry built before the base is loaded, as in unit tests).
        folder: ``adapter_folder``: where unknown names are looked up.
    """

    def __init__(self, base_name: str, base: BaseModelInfo | None = None, folder: str | None = None) -> None:
        self.base_name = base_name
        self.base = base
        self.folder = Path(folder) if folder is not None else None
        self.entries: dict[str, AdapterEntry] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()  # prompts are rendered in threads; two may resolve one name

    def add(self, name: str, path: str) -> AdapterEntry:
        """Register the adapter folder ``path`` as ``name`` (its metadata is read and checked).

        Raises:
            ValueError: ``name`` is taken (an adapter or the base) or empty.
            AdapterError: the folder is not an adapter, its method is not installed, or it
                belongs to another base model.
        """
        return self.add_entry(self.describe(name, path))

    def add_entry(self, entry: AdapterEntry) -> AdapterEntry:
        """Register an adapter :meth:`describe` checked.

        Raises:
            ValueError: its name is taken.
        """
        with self._lock:
            if entry.name in self.entries:
                raise ValueError(f"an adapter named {entry.name!r} is loaded already; unload it first")
            self.entries[entry.name] = entry
        return entry

    def describe(self, name: str, path: str) -> AdapterEntry:
        """What ``path`` holds, checked, without registering it (see :meth:`add`)."""
        if not name:
            raise ValueError("an adapter needs a name")
        if name == self.base_name:
            raise ValueError(f"{name!r} is the base model's name; give the adapter another")
        adapter = load_adapter_metadata(path)
        hooks_for(adapter, what=f"adapter {path}")
        if self.base is not None:
            adapter.base.check_same(self.base, what=f"adapter {name} ({path})")
        key = f"{name}#{next(self._keys)}"
        return AdapterEntry(
            name, key, str(path), adapter_template(adapter), adapter_system_prompt(adapter), adapter.method
        )

    def remove(self, name: str) -> AdapterEntry:
        """Forget ``name``; requests already queued on it still finish.

        Raises:
            KeyError: no adapter of that name.
        """
        return self.entries.pop(name)

    def resolve(self, name: str) -> AdapterEntry | None:
        """The adapter ``name`` (``None``: none), looked up in ``adapter_folder`` if not registered.

        Raises:
            AdapterError: ``adapter_folder`` holds a folder of that name that cannot be served.
        """
        if name in self.entries:
            return self.entries[name]
        if self.folder is None or not NAME.fullmatch(name) or name == self.base_name:
            return None
        path = self.folder / name
        if not is_adapter_folder(path):  # under the readers' lock: never between a save's two renames
            return None
        try:
            return self.add(name, str(path))
        except ValueError as err:
            if isinstance(err, AdapterError):
                raise
            return self.entries.get(name)  # registered meanwhile by another request

    @property
    def names(self) -> list[str]:
        return list(self.entries)
