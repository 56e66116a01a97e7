"""Telling a filesystem path from a Hugging Face hub id without asking the network."""

from __future__ import annotations


def looks_local(name_or_path: str) -> bool:
    """Whether a model argument can only be a filesystem path, never a hub id
    (``org/name``): absolute, ``./``, ``../``, ``~``, a backslash, or more than one ``/``."""
    return (
        name_or_path.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or name_or_path in (".", "..")
        or "\\" in name_or_path
        or name_or_path.count("/") > 1
    )
