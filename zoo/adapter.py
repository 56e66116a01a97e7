"""The adapter format: what a trained method hands to every tool.

An adapter folder holds::

    adapter.safetensors   the method's tensors (``Adapter.tensors``)
    adapter.json          format, version, method name and config, selection, base model
                          identity, free-form ``info`` (steps trained, metrics, ...) and
                          the SHA-256 of each ``.safetensors`` file (checked on load)
    (extra files)         whatever the method writes in ``ftzoo_save_adapter_files``

The update is decoupled from the base: tensors are in the base model's coordinates, so an
adapter applies to a plain copy of the base it was trained on. :class:`BaseModelInfo`
records which base that is, and :meth:`BaseModelInfo.check_same` refuses any other.
Folders are written atomically: to a temporary sibling first, then renamed into place.
A base model given as a relative path is recorded relative to the adapter folder and
resolved from there, so an adapter works from any directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.outputs import folder_lock, replace_folder, temporary_folder
from zoo.paths import looks_local

FORMAT = "ftzoo-adapter"
FORMAT_VERSION = 1
TENSORS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


class AdapterError(ValueError):
    """An adapter folder is missing, corrupt, or does not fit the base model."""


@dataclass
class BaseModelInfo:
    """Identity of the base model an adapter belongs to."""

    name_or_path: str
    architecture: str
    shapes: dict[str, Any]
    fingerprint: str
    """Digest of the first values of every parameter, rounded to bfloat16 so that the
    same weights loaded in float32, bfloat16 or float16 agree."""

    @classmethod
    def of(cls, model: nn.Module, name_or_path: str) -> BaseModelInfo:
        """Describe a freshly loaded (not yet rewritten) base model."""
        config = model.config
        shapes = {k: getattr(config, k) for k in SHAPE_FIELDS if getattr(config, k, None) is not None}
        architecture = type(model).__name__
        return cls(name_or_path, architecture, shapes, weights_fingerprint(model))

    def check_same(self, other: BaseModelInfo, what: str) -> None:
        """Raise :class:`AdapterError` naming the first difference from ``other``.

        Args:
            other: the base model at hand.
            what: what ``self`` belongs to, for the message (e.g. the adapter's path).
        """
        if self.architecture != other.architecture:
            raise AdapterError(
                f"{what} was trained on a {self.architecture} ({self.name_or_path}); "
                f"the base model is a {other.architecture} ({other.name_or_path})"
            )
        for key in [k for k in SHAPE_FIELDS if k in self.shapes or k in other.shapes]:
            if self.shapes.get(key) != other.shapes.get(key):
                raise AdapterError(
                    f"{what} was trained on a base with {key}={self.shapes.get(key)} "
                    f"({self.name_or_path}); the base model has {key}={other.shapes.get(key)} "
                    f"({other.name_or_path})"
                )
        if self.fingerprint != other.fingerprint:
            raise AdapterError(
                f"{what} was trained on other weights ({self.name_or_path}, fingerprint "
                f"{self.fingerprint[:12]}) than the base model ({other.name_or_path}, "
                f"fingerprint {other.fingerprint[:12]}): same shapes, different checkpoint"
            )


def weights_fingerprint(model: nn.Module, values_per_tensor: int = 64) -> str:
    """sha256 over the first values of every parameter, in name order, as bfloat16."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        head = param.detach().reshape(-1)[:values_per_tensor].float().to(torch.bfloat16)
        digest.update(name.encode())
        digest.update(head.cpu().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Adapter:
    """A trained update, decoupled from the base model."""

    method: str
    """Registered name of the method that made it."""
    config: dict[str, Any]
    """The method's ``__init__`` arguments."""
    selection: Any
    """What the method chose to train (JSON-able)."""
    base: BaseModelInfo
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form facts about the run (steps, metrics, trainable parameter count)."""

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "config": self.config,
            "selection": self.selection,
            "base": asdict(self.base),
            "info": self.info,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.tensors.items()},
        }


def save_adapter(adapter: Adapter, folder: str | Path, hooks: Any = None, allow_nonfinite: bool = False) -> Path:
    """Write ``adapter`` to ``folder`` atomically; replace an older adapter there.

    The files are written to a unique temporary sibling, then swapped into place under a
    lock on the parent folder, so concurrent saves to one folder each leave a complete
    adapter (the last one wins) and no temporary behind.

    Args:
        adapter: what to save.
        folder: the adapter folder to create or replace.
        hooks: the method's hook relay, so it can add its own files
            (``ftzoo_save_adapter_files``).
        allow_nonfinite: save even if a tensor holds NaN or infinity.

    Raises:
        AdapterError: ``folder`` exists and is not an adapter folder.
        NonFiniteError: a tensor holds NaN or infinity and ``allow_nonfinite`` is off.
    """
    folder = Path(folder)
    if not allow_nonfinite:
        check_finite(adapter.tensors, what=f"the adapter for {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder.parent):  # refuse early, but not while another save is swapping folders
        _refuse_non_adapter(folder)
    tmp = temporary_folder(folder)
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter.tensors.items()}
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
        if hooks is not None:
            hooks.ftzoo_save_adapter_files(adapter=adapter, folder=str(tmp))
        metadata = adapter.metadata()
        metadata["base"]["name_or_path"] = _portable_base_path(adapter.base.name_or_path, folder)
        metadata[CHECKSUMS] = {p.name: file_sha256(p) for p in sorted(tmp.glob("*.safetensors"))}
        (tmp / META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        with folder_lock(folder.parent):
            _refuse_non_adapter(folder)  # again: another writer may have put something there
            replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _refuse_non_adapter(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / META_FILE).exists())):
        raise AdapterError(f"{folder} exists and is not an adapter folder; refusing to overwrite it")


# ---------------------------------------------------------------------------------------
# non-finite values
# ---------------------------------------------------------------------------------------


class NonFiniteError(AdapterError):
    """An adapter holds NaN or infinite values: a diverged run, not a usable update."""


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse tensors that hold NaN or infinity, naming the first few and the counts.

    Raises:
        NonFiniteError: the message says how to override (``allow_nonfinite``).
    """
    bad = []
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            bad.append(f"{name} ({nan} NaN, {int(torch.isinf(tensor).sum())} inf of {tensor.numel()})")
    if bad:
        raise NonFiniteError(
            f"{what} holds non-finite values in {len(bad)} tensor(s): {'; '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}. The run diverged (lower the learning rate); pass "
            "allow_nonfinite=True (--allow_nonfinite true) to use it anyway"
        )


# ---------------------------------------------------------------------------------------
# where the base model is
# ---------------------------------------------------------------------------------------


def _portable_base_path(name_or_path: str, folder: Path) -> str:
    """A relative local base path, rewritten relative to the adapter folder (``./`` or
    ``../`` first, so it always reads as local): it then resolves from any directory."""
    path = Path(name_or_path)
    if path.is_absolute() or name_or_path.startswith("~") or not path.exists():
        return name_or_path
    relative = Path(os.path.relpath(path.absolute(), folder.absolute())).as_posix()
    return relative if relative.startswith("../") else f"./{relative}"


def resolve_base_path(name_or_path: str, folder: Path) -> str:
    """The base recorded by the adapter in ``folder``, as a path usable from here: a relative
    path that exists relative to the adapter folder becomes that (absolute) path."""
    path = Path(name_or_path)
    if path.is_absolute() or name_or_path.startswith("~"):
        return name_or_path
    beside = folder / path
    if beside.exists() and (looks_local(name_or_path) or not path.exists()):
        return str(beside.resolve())
    return name_or_path


def load_adapter(folder: str | Path, map_location: str | torch.device = "cpu", allow_nonfinite: bool = False) -> Adapter:
    """Read an adapter folder written by :func:`save_adapter`.

    Args:
        folder: the adapter folder.
        map_location: where the tensors are loaded.
        allow_nonfinite: load it even if a tensor holds NaN or infinity (a diverged run,
            which would serve and test as garbage tokens); every tool refuses such an adapter
            unless asked.

    Raises:
        AdapterError: the folder or a file is missing, the JSON is malformed or of another
            format version, or the tensors file is corrupt or does not match the metadata.
        NonFiniteError: a tensor holds NaN or infinity (named) and ``allow_nonfinite`` is off.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    with folder_lock(folder.parent, shared=True):  # never between the two renames of a save replacing it
        return _read_adapter(folder, map_location, allow_nonfinite)


def load_adapter_metadata(folder: str | Path) -> Adapter:
    """An adapter folder's ``adapter.json`` alone, as an :class:`Adapter` whose ``tensors`` are
    empty: its method, config, base and ``info`` (template, system prompt), for whoever needs to
    know what an adapter is without its weights (the server's front end). Neither the tensors
    nor their checksums are read.

    Raises:
        AdapterError: the folder or a file is missing, or the JSON is malformed or of another format.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    with folder_lock(folder.parent, shared=True):
        return _adapter(_read_metadata(folder), folder, {})


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an adapter (its ``adapter.json``), asked under the readers' lock:
    a save replacing the adapter moves the old folder aside before the new one is in place, and
    a look in between would find none (a server's ``adapter_folder`` lookup answered "no such
    model" while the adapter was being replaced)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return False
    with folder_lock(folder.parent, shared=True):
        return (folder / META_FILE).is_file()


def _read_metadata(folder: Path) -> dict[str, Any]:
    meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    for path in (meta_path, tensors_path):
        if not path.is_file():
            raise AdapterError(f"{folder}: not an ftzoo adapter folder ({path.name} is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterError(f"{meta_path}: malformed JSON at line {err.lineno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise AdapterError(
            f"{meta_path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}): the file was "
            "damaged or replaced; an adapter's metadata is UTF-8 JSON"
        ) from err
    _check_metadata(meta, meta_path)
    return meta


def _adapter(meta: dict[str, Any], folder: Path, tensors: dict[str, torch.Tensor]) -> Adapter:
    return Adapter(
        method=meta["method"],
        config=meta["config"],
        selection=meta.get("selection"),
        base=BaseModelInfo(**{**meta["base"], "name_or_path": resolve_base_path(meta["base"]["name_or_path"], folder)}),
        tensors=tensors,
        info=meta.get("info", {}),
    )


def _read_adapter(folder: Path, map_location: str | torch.device, allow_nonfinite: bool) -> Adapter:
    meta = _read_metadata(folder)
    tensors_path = folder / TENSORS_FILE
    check_checksums(folder, meta.get(CHECKSUMS, {}))
    try:
        tensors = load_file(str(tensors_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"{tensors_path}: not a readable safetensors file ({err})") from err
    expected = meta.get("tensors", {})
    for name, spec in expected.items():
        if name not in tensors:
            raise AdapterError(f"{tensors_path}: tensor {name!r} listed in {META_FILE} is missing")
        if list(tensors[name].shape) != spec["shape"]:
            raise AdapterError(
                f"{tensors_path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"{META_FILE} says {spec['shape']}"
            )
    if not allow_nonfinite:
        check_finite(tensors, what=f"adapter {folder}")
    return _adapter(meta, folder, tensors)


CHECKSUMS = "sha256"
"""The ``adapter.json`` field with the SHA-256 of each tensor file of the folder (written by
:func:`save_adapter`, checked by :func:`load_adapter`; older adapters have none)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checksums(folder: Path, checksums: Any) -> None:
    """Refuse a tensor file whose bytes are not those :func:`save_adapter` wrote (flipped bits
    on a disk, a copy cut short, an edit): safetensors would load changed values silently.

    Raises:
        AdapterError: naming the file, and whether it is missing or differs.
    """
    if not isinstance(checksums, dict):
        raise AdapterError(f"{folder / META_FILE}: field {CHECKSUMS!r} must map file names to SHA-256 digests")
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise AdapterError(f"{path}: missing; {META_FILE} records it")
        actual = file_sha256(path)
        if actual != expected:
            raise AdapterError(
                f"{path}: its SHA-256 is {actual[:16]}..., {META_FILE} records {str(expected)[:16]}...: the file was "
                "changed or damaged after it was saved (a disk error, a copy cut short); save or copy the adapter again"
            )


def _check_metadata(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an ftzoo adapter (field 'format' must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
            f"{path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this ftzoo reads version {FORMAT_VERSION})"
        )
    for key, kind in (("method", str), ("config", dict), ("base", dict)):
        if not isinstance(meta.get(key), kind):
            raise AdapterError(f"{path}: field {key!r} must be a {kind.__name__}")
    base_fields = {"name_or_path", "architecture", "shapes", "fingerprint"}
    if set(meta["base"]) != base_fields:
        raise AdapterError(f"{path}: field 'base' must have exactly the keys {sorted(base_fields)}")
