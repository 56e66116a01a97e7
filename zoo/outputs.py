"""Output folders: refuse a bad destination before any work, and serialize replacements.

``fit`` trains for minutes or hours before it writes its adapter, so the destination is
checked up front (:func:`check_output_folder`): a folder of another kind is never replaced,
one of the same kind only when asked, and an unwritable place is named before the first
step. Writers that replace a folder take :func:`folder_lock` on its parent, so two saves to
one place cannot interleave their renames.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves there are not serialized
    fcntl = None


class OutputPathError(ValueError):
    """An output folder cannot or must not be written."""


def check_output_folder(target: str | Path, overwrite: bool, marker: str, flag: str = "--overwrite true") -> None:
    """Refuse ``target`` unless it is absent, empty, or (with ``overwrite``) a folder of this kind,
    and its nearest existing parent folder is writable.

    Args:
        target: the folder that will be written.
        overwrite: replace an existing folder of this kind.
        marker: a file every folder of this kind holds (``adapter.json``); a non-empty folder
            without it is never replaced.
        flag: how the user asks to overwrite, for the message.

    Raises:
        OutputPathError: naming the folder and what to do instead.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target} is a file, not a folder; choose another output folder")
    if target.is_dir() and any(target.iterdir()):
        if not (target / marker).is_file():
            raise OutputPathError(
                f"{target} exists, is not empty and holds no {marker}; refusing to replace it (choose another folder)"
            )
        if not overwrite:
            raise OutputPathError(f"{target} already exists; pass {flag} to replace it, or choose another folder")
    check_writable(target.parent)


def check_writable(folder: str | Path) -> None:
    """Refuse a folder that cannot be created or written, by trying: a permission bit says
    nothing to root, and nothing about a read-only mount.

    Raises:
        OutputPathError: the nearest existing ancestor is a file or refuses a new file.
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputPathError(f"cannot create {folder}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".ftzoo-write-test-"):
            pass
    except OSError as err:
        raise OutputPathError(f"cannot write to {existing} ({err.strerror or err}); choose another output folder") from err


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (a directory) for the duration.

    The lock is taken on the directory itself, so it leaves no lock file behind; it
    excludes other processes and other threads alike (each holds its own descriptor).
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
