"""Outputs: refuse a bad destination before any work, write atomically, serialize replacements.

``fit`` trains for minutes or hours before it writes its adapter, so the destination is
checked up front (:func:`check_output_folder`): a folder of another kind is never replaced,
one of the same kind only when asked, and an unwritable place is named before the first
step. Writers that replace a folder take :func:`folder_lock` on its parent, so two saves to
one place cannot interleave their renames.

Every file and folder ftzoo writes (checkpoints, adapters, reports, exported models)
appears whole or not at all: it is written under a temporary sibling name and renamed into
place (:func:`atomic_file`, :func:`atomic_folder`, :func:`replace_folder`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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


def check_report_folder(folder: str | Path | None, overwrite: bool, marker: str = "results.json") -> None:
    """Refuse a tool's report folder before the tool does any work: a file in the way, a folder
    that cannot be written, a folder of something else, or (unless ``overwrite``) an earlier
    report; otherwise the results are lost to an ``OSError`` after the work, or silently replace
    the earlier ones.

    Args:
        folder: where the tool writes its files (``None``: it writes none).
        overwrite: replace an earlier report there.
        marker: a file every report of this tool holds.

    Raises:
        OutputPathError: naming the folder and what to do instead.
    """
    if folder is None:
        return
    check_output_folder(folder, overwrite, marker, flag="--overwrite true")
    check_writable(folder)


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


CLAIM_STALE_SECONDS = 60.0
"""An unreadable claim file older than this was left by a writer killed while creating it."""


def claim_folder(target: str | Path, owner: str) -> Path:
    """Claim ``target`` for one writer until :func:`release_claim`: two ``fit`` runs given the
    same new adapter folder must not both train for it and the later silently replace the other.

    The claim is a small JSON file ``.<name>.claim`` beside ``target`` (its process id, host,
    start time and ``owner``), created exclusively under :func:`folder_lock` on the parent. A
    claim whose process is gone (on this host) is stale and taken over.

    Returns:
        The claim file, for :func:`release_claim`.

    Raises:
        OutputPathError: a live process holds the claim; the message says which.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    claim = target.parent / f".{target.name}.claim"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "owner": owner}  # fmt: skip
    with folder_lock(target.parent):
        holder = _claim_holder(claim)
        if holder is not None:
            if holder.get("pid") == os.getpid() and holder.get("host") == record["host"]:
                who = "another run in this process"
            else:
                who = f"another run (process {holder.get('pid', '?')} on {holder.get('host', '?')})"
            raise OutputPathError(
                f"{target} is claimed by {who} since {holder.get('since', '?')}: {holder.get('owner', '?')}. Two runs "
                f"must not write one adapter folder: give this one another --model.adapter_dir (if that run is gone, "
                f"remove {claim})"
            )
        with atomic_file(claim) as handle:
            json.dump(record, handle)
    return claim


def _claim_holder(claim: Path) -> dict[str, Any] | None:
    """The record of a live claim on ``claim``; ``None`` if there is none or it is stale."""
    try:
        holder = json.loads(claim.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {} if time.time() - claim.stat().st_mtime < CLAIM_STALE_SECONDS else None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return None  # its process is gone: stale
        except PermissionError:
            pass  # another user's live process
    return holder


def release_claim(claim: Path | None) -> None:
    """Remove a claim made by :func:`claim_folder` in this process (once the adapter is written,
    or the run stopped)."""
    if claim is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if json.loads(claim.read_text()).get("pid") == os.getpid():
            claim.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | Path, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``folder`` (a directory) for the duration: exclusive for a
    writer that swaps a folder in it, ``shared`` for readers of such a folder (they read
    together, and never between a writer's two renames).

    The lock is taken on the directory itself, so it leaves no lock file behind; it
    excludes other processes and other threads alike (each holds its own descriptor).
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w", fsync: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``target``; rename it into place only on success.

    Args:
        target: the file to create or replace.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        fsync: flush to the disk before the rename (checkpoints: a crash right after the
            rename must not leave an empty file under the final name).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; the file is the user's, as open() makes it
        with os.fdopen(fd, mode) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output(target: str | Path, overwrite: bool, marker: str) -> None:
    """Refuse to write a folder over something that is there, before any work is done (tools).

    Args:
        target: the folder a tool will write.
        overwrite: replace an existing folder of the same kind.
        marker: a file every folder of this kind holds (``config.json``, ``adapter.json``);
            a non-empty folder without it is never replaced.

    Raises:
        FileExistsError: ``target`` exists and is not empty, and ``overwrite`` is off, or
            it is not a folder of this kind.
        OutputPathError: the folder it is written beside cannot be created or written
            (:func:`check_writable`), which would otherwise surface after the work.
    """
    target = Path(target)
    check_writable(target.absolute().parent)  # the new folder is written beside the target, then renamed
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{target} exists; choose another output or pass --overwrite true")
    if not (target / marker).is_file():
        raise FileExistsError(f"{target} exists and holds no {marker}; refusing to replace it")


def temporary_folder(target: Path) -> Path:
    """A new empty sibling of ``target`` with ordinary permissions (mkdtemp makes it private)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is removed only once ``new`` is there,
    and put back if the move fails. Callers hold :func:`folder_lock` on the parent."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{new.name.rsplit('-', 1)[-1]}")
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, marker: str = "config.json") -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to fill; move it into place on success only.

    Raises:
        FileExistsError: see :func:`check_output`.
    """
    target = Path(target)
    check_output(target, overwrite, marker)
    tmp = temporary_folder(target)
    try:
        yield tmp
        with folder_lock(target.parent):  # two writers of one folder must not interleave their renames
            replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
