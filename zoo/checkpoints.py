"""Checkpoints that survive a full disk, a damaged file and Ctrl-C.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside its real
  name and renames it into place, so a checkpoint is complete or absent: a full disk or a
  kill mid-write leaves the previous ``last.ckpt`` as it was. Reading refuses a damaged
  file with its path and what is wrong (:func:`read_checkpoint`). ``FineTuneModule``
  installs it on plain strategies (:class:`zoo.guard.FitGuard`).
* :class:`InterruptCheckpoint` is Lightning's ``OnExceptionCheckpoint`` that also says
  where the checkpoint is and prints the exact command that resumes from it. Recipes
  declare it beside a ``ModelCheckpoint`` that saves every N steps.
* :func:`identity` and :func:`selection_differs`: what a checkpoint records beside the
  trainable tensors (method, config, selection, base model) and the check on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zoo.outputs import atomic_file

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values that Lightning resolves itself (not file names)."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not a checkpoint."""


def read_checkpoint(path: str | Path, **load_kwargs: Any) -> dict[str, Any]:
    """``torch.load`` a checkpoint, refusing a damaged one by name.

    Args:
        path: the ``.ckpt`` file.
        load_kwargs: passed to ``torch.load`` (``map_location``, ``weights_only``, ``mmap``).

    Raises:
        CheckpointError: the file is missing, empty, truncated or not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    try:
        checkpoint = torch.load(path, **load_kwargs)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} is damaged ({size:,} bytes; {type(err).__name__}: {str(err).splitlines()[0] if str(err) else '?'})"
            f": it was probably cut short by a full disk or a kill while it was written. {_others(path)}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def _others(path: Path) -> str:
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
    if not others:
        return "No other checkpoint is in its folder."
    return f"Resume from another checkpoint in {path.parent}: {', '.join(others[:5])}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear whole or not at all (temporary name, fsync,
    rename in the same folder), and whose reads name a damaged file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)  # its own refusal
        with atomic_file(path, mode="wb", fsync=True) as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {"map_location": map_location or (lambda storage, loc: storage)}
        if weights_only is not None:
            kwargs["weights_only"] = weights_only
        return read_checkpoint(path, **kwargs)


def use_atomic_io(strategy: Any) -> None:
    """Give ``strategy`` an :class:`AtomicCheckpointIO` if it writes plain torch files
    (single device, DDP); sharded strategies (FSDP, DeepSpeed) keep their own writers."""
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        with contextlib.suppress(AttributeError, NotImplementedError):
            if type(strategy.checkpoint_io) is TorchCheckpointIO:
                strategy.checkpoint_io = AtomicCheckpointIO()


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Save a checkpoint when ``fit`` stops on Ctrl-C or an error, and print the command
    that resumes from it.

    Ctrl-C (SIGINT) during training does not cut a step in half: the current step finishes,
    then training stops and the checkpoint is written, so resuming continues exactly as an
    uninterrupted run would. SIGTERM (what a scheduler or ``kill`` sends) does the same
    (Lightning finishes the step); the CLI then exits with status 143. A second Ctrl-C stops
    at once, in the middle of the step: nothing is written then (a half-updated step is no
    checkpoint), and one line names the last complete checkpoint. Once the checkpoint is being
    written, Ctrl-C waits for it (a cut write would leave none). Nothing is saved when the
    error comes before the first training step (nothing is lost then, and the model may not
    be built).

    Args:
        dirpath: where to write it; default: the ``ModelCheckpoint``'s folder, else
            ``<log_dir>/checkpoints``.
        filename: the file name, without ``.ckpt``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "interrupted") -> None:
        super().__init__(dirpath or "", filename)
        self.resume_command: list[str] | None = None
        """The ``lightning`` command line of this run (set by the CLI), to print with ``--ckpt_path``."""
        self._started = False
        self._stop_requested = False
        self._stopped_now = False
        self._step_finished = False
        self._previous_handler: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = True
        if not self.dirpath:
            periodic = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
            root = None if periodic else (trainer.log_dir or trainer.default_root_dir)
            self.dirpath = periodic.dirpath if periodic else os.path.join(root, "checkpoints")
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._step_finished:  # the checkpoint is being written (whole or not at all): let it finish
            with contextlib.suppress(Exception):  # never break the write (e.g. a reentrant print): say it if we can
                print("\nCtrl-C: the checkpoint is being written; it will be complete in a moment", file=sys.stderr)
            return
        if self._stop_requested:  # the second Ctrl-C: stop in the middle of the step
            self._stopped_now = True
            self._restore_handler()
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop now)", file=sys.stderr)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            if signal.getsignal(signal.SIGINT) == self._request_stop:  # not a handler set since (Lightning ignores
                signal.signal(signal.SIGINT, self._previous_handler)  # Ctrl-C while it shuts down after one)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self._stop_requested, all=False):  # every rank stops together
            self._step_finished = True
            raise KeyboardInterrupt

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._started or self._stopped_now:
            self._restore_handler()
            if self._stopped_now and trainer.is_global_zero:
                print(self.stopped_now_message(trainer), file=sys.stderr, flush=True)
            return
        self._step_finished = True  # a Ctrl-C from now on waits for the checkpoint (SIGTERM, an error)
        try:
            super().on_exception(trainer)
        except Exception as err:  # noqa: BLE001  # never hide the error that stopped training
            if trainer.is_global_zero:
                print(self.unsaved_message(trainer, exception, err), file=sys.stderr, flush=True)
            return
        finally:
            self._restore_handler()
        if trainer.is_global_zero:
            print(self.message(trainer.global_step, exception), file=sys.stderr, flush=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()
        if self._started:  # a finished run no longer needs its interrupt checkpoint
            super().teardown(trainer)

    def message(self, step: int, exception: BaseException) -> str:
        """What the user reads: why training stopped, where the checkpoint is, how to resume."""
        command = resume_command(self.resume_command, self.ckpt_path)
        return f"\nTraining {_why(exception)}\nCheckpoint at step {step}: {self.ckpt_path}\nResume with:\n  {command}\n"

    def unsaved_message(self, trainer: L.Trainer, exception: BaseException, err: BaseException) -> str:
        """When the interrupt checkpoint cannot be written either (the disk is full): the last
        complete checkpoint, and the command that resumes from it."""
        lines = [f"\nTraining {_why(exception)}", f"Could not write {self.ckpt_path} either: {err}"]
        last = latest_checkpoint(trainer)
        if last is None:
            lines.append("No complete checkpoint of this run exists.")
        else:
            command = resume_command(self.resume_command, last[0])
            lines += [f"Last complete checkpoint, at step {last[1]}: {last[0]}", "Resume with:", f"  {command}"]
        return "\n".join(lines) + "\n"

    def stopped_now_message(self, trainer: L.Trainer) -> str:
        """One line after a second Ctrl-C: no checkpoint of the cut step, and the last complete one."""
        step = trainer.global_step + 1
        last = latest_checkpoint(trainer)
        if last is None:
            kept = "no complete checkpoint of this run exists"
        else:
            kept = f"the last complete checkpoint is {last[0]} (step {last[1]}); resume with --ckpt_path {last[0]}"
        return f"\nStopped at once (second Ctrl-C) in step {step}: no checkpoint of that step was written; {kept}"


def _why(exception: BaseException) -> str:
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exception, SIGTERMException):
        return "stopped by SIGTERM (a scheduler or `kill` asked it to stop)"
    return f"stopped by an error: {exception}"


def latest_checkpoint(trainer: L.Trainer) -> tuple[str, int] | None:
    """The newest checkpoint the run's ``ModelCheckpoint`` callbacks wrote, and its step."""
    paths = [getattr(c, attr) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
             for attr in ("last_model_path", "best_model_path")]  # fmt: skip
    paths = [p for p in paths if p and os.path.isfile(p)]
    if not paths:
        return None
    path = max(paths, key=os.path.getmtime)
    try:
        return path, int(read_checkpoint(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except (CheckpointError, KeyError):
        return None


def resume_command(args: list[str] | None, ckpt_path: str) -> str:
    """``lightning fit ... --ckpt_path <ckpt_path>``: ``args`` (a ``lightning`` command line,
    subcommand first) with any earlier ``--ckpt_path`` replaced."""
    if args is None:
        return f"lightning fit <the same arguments> --ckpt_path {shlex.quote(ckpt_path)}"
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["lightning", *kept, "--ckpt_path", ckpt_path])


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was written by another method, config or base model."""


def identity(method: str | None, config: dict[str, Any] | None, selection: Any, base: Any) -> dict[str, Any]:
    """What a checkpoint records beside the trainable tensors, to rebuild and check a run."""
    return {"method": method, "config": config, "selection": selection, "base": base.__dict__ if base else None}


def selection_differs(checkpoint: dict[str, Any], current: dict[str, Any], base: Any) -> bool:
    """Check that ``checkpoint`` was written by this run's method, config and base model.

    Returns:
        Whether its selection differs from this run's (the model must be rebuilt with it).

    Raises:
        CheckpointMismatchError: not an ftzoo checkpoint, or another method, config or base.
    """
    saved = checkpoint.get("ftzoo")
    if saved is None:
        raise CheckpointMismatchError("not an ftzoo checkpoint (it has no 'ftzoo' entry)")
    for key in ("method", "config"):
        if _canonical(saved[key]) != _canonical(current[key]):
            raise CheckpointMismatchError(
                f"the checkpoint was trained with {key} {saved[key]!r}, this run has {current[key]!r}"
            )
    type(base)(**saved["base"]).check_same(base, what="the checkpoint")
    return _canonical(saved["selection"]) != _canonical(current["selection"])


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def keep_trainable_state(checkpoint: dict[str, Any], keys: set[str]) -> None:
    """Keep only the trainable entries of the state dict the strategy gathered.

    Under FSDP the local parameters are 1-D shards, the gathered entries whole (and empty off
    rank 0). DeepSpeed drops this dict and saves the module itself (see
    ``exclude_frozen_parameters`` in its config).
    """
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}


def check_trainable_state(checkpoint: dict[str, Any], keys: set[str]) -> None:
    """Refuse a checkpoint that lacks a trainable tensor (FSDP and DeepSpeed load the tensors
    themselves and pass no state dict: nothing to check then).

    Raises:
        CheckpointMismatchError: naming the first missing tensors.
    """
    if "state_dict" not in checkpoint:
        return
    missing = keys - set(checkpoint["state_dict"])
    if missing:
        raise CheckpointMismatchError(f"the checkpoint lacks trainable tensors: {sorted(missing)[:5]}")


def stored_selection(path: str | Path | None) -> Any:
    """The selection stored in the checkpoint at ``path``, to rebuild a resumed run's model
    before Lightning loads it; ``None`` without a path or for names Lightning resolves itself
    (``last``: then ``on_load_checkpoint`` rebuilds)."""
    if path is None or str(path) in LIGHTNING_CKPT_NAMES:
        return None
    checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get("ftzoo", {}).get("selection")


def check_rebuildable(strategy: Any) -> None:
    """Refuse to rebuild a model for a checkpoint's selection once the strategy has wrapped it.

    Raises:
        CheckpointMismatchError: FSDP or DeepSpeed has already sharded the model.
    """
    if strategy.restore_checkpoint_after_setup:
        raise CheckpointMismatchError(
            f"the checkpoint's selection differs from this run's, and {type(strategy).__name__} "
            "has already sharded the model, so it cannot be rebuilt; resume with the same method config, "
            "seed and data, or under DDP"
        )
