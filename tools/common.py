"""What the tools share: reading adapters, loading the base they belong to, atomic output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pluggy import HookRelay
from torch import nn

from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter
from zoo.loading import ModelLoadError, load_model
from zoo.outputs import folder_lock
from zoo.plugins import PluginError, method_from_config, method_hooks


def parse_named(specs: list[str]) -> dict[str, str]:
    """``["name=path", "path"]`` → ``{name: path}``; a bare path is named by its folder.

    Raises:
        ValueError: two adapters get the same name, or a name is empty.
    """
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not name or not path:
            raise ValueError(f"adapter {spec!r}: give it as name=path")
        if name in named:
            raise ValueError(f"two adapters are named {name!r}; name them with name=path")
        named[name] = path
    return named


def read_adapter(path: str | Path) -> Adapter:
    """Load an adapter folder (:func:`zoo.load_adapter`) and check that its method is installed."""
    adapter = load_adapter(path)
    hooks_for(adapter, what=f"adapter {path}")
    return adapter


def hooks_for(adapter: Adapter, what: str = "adapter") -> HookRelay:
    """The hook relay of the method that made ``adapter``."""
    try:
        return method_hooks(method_from_config(adapter.method, adapter.config))
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
    except (RuntimeError, KeyError, AttributeError, ValueError) as err:
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


def check_output(target: str | Path, overwrite: bool, marker: str) -> None:
    """Refuse to write a folder over something that is there, before any work is done.

    Args:
        target: the folder a tool will write.
        overwrite: replace an existing folder of the same kind.
        marker: a file every folder of this kind holds (``config.json``, ``adapter.json``);
            a non-empty folder without it is never replaced.

    Raises:
        FileExistsError: ``target`` exists and is not empty, and ``overwrite`` is off, or
            it is not a folder of this kind.
    """
    target = Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{target} exists; choose another output or pass --overwrite true")
    if not (target / marker).is_file():
        raise FileExistsError(f"{target} exists and holds no {marker}; refusing to replace it")


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, marker: str = "config.json") -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to fill; move it into place on success only.

    Raises:
        FileExistsError: see :func:`check_output`.
    """
    target = Path(target)
    check_output(target, overwrite, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        with folder_lock(target.parent):  # two writers of one folder must not interleave their renames
            if target.exists():
                old = target.with_name(f"{tmp.name}.old")
                target.rename(old)
                try:
                    tmp.rename(target)
                except BaseException:
                    old.rename(target)  # the previous folder stays in place
                    raise
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            else:
                tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Any]:
    """Open a temporary sibling of ``target`` for writing text; rename it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(device: str) -> torch.device:
    """``auto`` → the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode_prompts(
    tokenizer: Any, prompts: list[str], chat: bool, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Tokenize prompts as one left-padded batch (so generation continues every row at the end).

    Args:
        tokenizer: the base model's tokenizer.
        prompts: the texts.
        chat: wrap each prompt as a user message with the tokenizer's chat template.
        device: where the tensors go.
    """
    if chat:
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    finally:
        tokenizer.padding_side = side
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def generate_greedy(
    model: nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], max_new_tokens: int, logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy decoding with a KV cache (``generate``).

    Returns:
        ``(new tokens [B, N], logits [B, N, vocab] or None)``; rows that stop early are
        padded with the pad token.
    """
    from zoo.evaluation import greedy_config

    config = greedy_config(tokenizer, max_new_tokens)
    config.return_dict_in_generate = True
    config.output_logits = logits
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config)
    new = out.sequences[:, batch["input_ids"].shape[1] :]
    return new, (torch.stack(out.logits, dim=1) if logits else None)


def replace_docs_section(path: Path, title: str, section: str) -> None:
    """Replace (or append) the section headed ``title`` (e.g. ``"## Training"``) in the
    Markdown file ``path``, atomically; other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{title}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title) + 2)
        text = text[: start + 1] + section + ("" if end < 0 else "\n" + text[end + 1 :])
    with atomic_file(path) as handle:
        handle.write(text)
