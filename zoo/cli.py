"""``lightning``: LightningCLI for ftzoo (fit, validate, test, predict).

Method plugins are loaded before the parser is built, so a method can be given by class
path, by short class name, or by its registered name (``--model.method s2ft``).

Registered names are resolved before parsing: on the argument list the CLI is given
(:func:`resolve_method_names`; ``sys.argv`` itself is never rewritten) and, in config files,
by a YAML loader registered with jsonargparse's public ``set_loader``. jsonargparse offers
no hook to map a value to a class path while it resolves ``class_path`` (it accepts only
import paths and short names of imported subclasses), so both happen before it sees them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zoo.adapter import AdapterError
from zoo.checkpoints import (
    LIGHTNING_CKPT_NAMES,
    CheckpointError,
    CheckpointMismatchError,
    InterruptCheckpoint,
    read_checkpoint,
    resume_command,
)
from zoo.guard import NonFiniteLossError
from zoo.loading import ModelLoadError
from zoo.module import FineTuneModule
from zoo.outputs import OutputPathError
from zoo.plugins import PluginError, available_methods, is_method_reference, unknown_method_message
from zoo.targets import UnsupportedWeightError

METHOD_FLAG = "--model.method"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that ``lightning`` reports in one line (the checkpoint callbacks name what was kept)."""
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
"""What ``lightning fit`` exits with after SIGTERM (a shell's convention for death by that signal)."""


class ConfigError(ValueError):
    """A config file or a value in it is wrong; the message names which and why."""


def resolve_method_names(args: list[str]) -> list[str]:
    """Replace a registered method name after ``--model.method`` by its class path.

    Raises:
        PluginError: the value names no installed method (listing them, and the closest name).
    """
    methods = available_methods()
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == METHOD_FLAG and i + 1 < len(resolved):
            _check_method_name(resolved[i + 1])
            if resolved[i + 1] in methods:
                resolved[i + 1] = _class_path(methods[resolved[i + 1]].cls)
        elif arg.startswith(METHOD_FLAG + "="):
            _check_method_name(arg.split("=", 1)[1])
            if arg.split("=", 1)[1] in methods:
                resolved[i] = f"{METHOD_FLAG}={_class_path(methods[arg.split('=', 1)[1]].cls)}"
    return resolved


OPTIMIZER_FLAGS = ("--model.optimizer", "--model.optimizer.class_path")


def resolve_optimizer_names(args: list[str]) -> list[str]:
    """A short optimizer name (``--model.optimizer AdamW``) means ``torch.optim``'s.

    jsonargparse resolves a short name among every imported subclass of
    ``torch.optim.Optimizer``; bitsandbytes (the quantized base's library, which peft imports
    whenever it is installed) defines ``AdamW``, ``Adam``, ``SGD``, ... too, which would make the
    short name ambiguous. A class path is left as it is (``bitsandbytes.optim.AdamW8bit``).
    """
    resolved = list(args)
    for i, arg in enumerate(resolved):
        flag, sep, value = arg.partition("=")
        if flag in OPTIMIZER_FLAGS and sep:
            resolved[i] = f"{flag}={_torch_optimizer(value)}"
        elif arg in OPTIMIZER_FLAGS and i + 1 < len(resolved):
            resolved[i + 1] = _torch_optimizer(resolved[i + 1])
    return resolved


def _torch_optimizer(value: str) -> str:
    import torch

    candidate = getattr(torch.optim, value, None) if re.fullmatch(r"[A-Za-z_]\w*", value) else None
    if isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer):
        return f"torch.optim.{value}"
    return value


def _check_method_name(value: str) -> None:
    """Refuse a bare word that names no method (jsonargparse would ask for a dot import path);
    leave YAML/JSON values, ``null`` and class paths to the parser."""
    if re.fullmatch(r"[A-Za-z_][\w-]*", value) and value not in ("null", "None") and not is_method_reference(value):
        raise PluginError(unknown_method_message(value))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_config_with_method_names(text: str) -> Any:
    """YAML loader for config files: ``method: s2ft`` or ``class_path: s2ft`` under
    ``model`` become the registered method's class path, and a short optimizer name
    ``torch.optim``'s (:func:`resolve_optimizer_names`)."""
    value = _YAML_LOAD(text)
    model = value.get("model") if isinstance(value, dict) else None
    method = model.get("method") if isinstance(model, dict) else None
    optimizer = model.get("optimizer") if isinstance(model, dict) else None
    if isinstance(optimizer, str):
        model["optimizer"] = _torch_optimizer(optimizer)
    elif isinstance(optimizer, dict) and isinstance(optimizer.get("class_path"), str):
        optimizer["class_path"] = _torch_optimizer(optimizer["class_path"])
    methods = available_methods()
    name = method.get("class_path") if isinstance(method, dict) else method
    if isinstance(name, str):
        _check_method_name(name)
    if isinstance(method, str) and method in methods:
        model["method"] = _class_path(methods[method].cls)
    elif isinstance(method, dict) and method.get("class_path") in methods:
        method["class_path"] = _class_path(methods[method["class_path"]].cls)
    return value


def check_config_files(args: list[str]) -> None:
    """Parse each ``--config`` file as YAML first, so that a syntax error names the file
    (jsonargparse reports it as ``"<unicode string>"``).

    Raises:
        ConfigError: with the file, line, column and the problem.
    """
    for path in _config_paths(args):
        try:
            text = Path(path).read_text()
        except OSError:
            continue  # jsonargparse names a missing file itself
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
            raise ConfigError(f"{path}{where}: YAML syntax error: {problem or err}") from err


def _config_paths(args: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


_YAML_LOAD = get_loader("yaml")  # jsonargparse's own YAML loader, which this one extends
set_loader("ftzoo", load_config_with_method_names, exceptions=(yaml.YAMLError,))


class RunConfig(SaveConfigCallback):
    """LightningCLI's config saving, which never writes over a file it did not save itself.

    The full config goes to ``<log_dir>/config.yaml`` as in Lightning, unless that file is one
    of the run's own ``--config`` inputs (with ``--trainer.logger false`` the log folder is the
    working directory, where the user's ``config.yaml`` often is) or some other file that no
    earlier run saved; then it goes beside it as ``run-config.yaml`` (or ``run-config-2.yaml``, ...).

    Args:
        inputs: the ``--config`` files of this run.
    """

    def __init__(self, *args: Any, inputs: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs = [Path(p) for p in inputs or []]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            folder = Path(trainer.log_dir)  # a collective: every rank asks
            name = self._free_name(folder) if trainer.is_global_zero else None
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)

    def _free_name(self, folder: Path) -> str:
        names = [self.config_filename] + [f"run-config{f'-{i}' if i > 1 else ''}.yaml" for i in range(1, 100)]
        for name in names:
            if self._replaceable(folder / name):
                if name != self.config_filename:
                    rank_zero_info(
                        f"{folder / self.config_filename} is not a config an earlier run saved (it is "
                        f"{'an input of this run' if self._is_input(folder / self.config_filename) else 'your file'}); "
                        f"this run's config is saved as {folder / name}"
                    )
                return name
        raise OutputPathError(f"{folder} holds no free name for this run's config; choose another log folder")

    def _replaceable(self, path: Path) -> bool:
        if not path.exists():
            return True
        return path.is_file() and not self._is_input(path) and _saved_by_lightning(path)

    def _is_input(self, path: Path) -> bool:
        return any(p.exists() and path.exists() and os.path.samefile(p, path) for p in self.inputs)


def _saved_by_lightning(path: Path) -> bool:
    """Whether ``path`` starts with the header LightningCLI writes on the configs it saves."""
    with path.open("rb") as handle:
        return handle.read(len(SAVED_CONFIG_HEADER)) == SAVED_CONFIG_HEADER


SAVED_CONFIG_HEADER = b"# lightning.pytorch=="


class FtzooCLI(LightningCLI):
    """LightningCLI with the model's tokenizer linked into the data module.

    Args:
        command_line: the arguments as given (subcommand first), for the resume command an
            :class:`~zoo.checkpoints.InterruptCheckpoint` prints.
    """

    def __init__(self, *args: Any, command_line: list[str] | None = None, **kwargs: Any) -> None:
        self.command_line = command_line
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Refuse a missing or damaged ``--ckpt_path`` by name before LightningCLI reads its
        hyperparameters (which fails with a bare ``OSError``)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and str(path) not in LIGHTNING_CKPT_NAMES:
            read_checkpoint(path, weights_only=True, map_location="cpu", mmap=True)
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        """Build the objects; an error raised by a constructor (a missing ``data_dir``) is
        re-raised as itself, not buried in jsonargparse's dump of every argument."""
        try:
            super().instantiate_classes()
        except Exception as err:
            cause = _constructor_error(err)
            if cause is err:
                raise
            if isinstance(cause, USER_ERRORS):
                raise cause from None
            raise ConfigError(f"{type(cause).__name__}: {cause}") from cause

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; SIGTERM (Lightning stops after the step, and the interrupt checkpoint is
        written) exits with status 143 (128 + SIGTERM), as schedulers expect, not 0."""
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            raise SystemExit(SIGTERM_EXIT_STATUS) from None

    def before_fit(self) -> None:
        """Tell the module which checkpoint it resumes from, so that it rebuilds the stored
        selection instead of selecting anew (and scoring calibration batches) first: Lightning
        knows ``trainer.ckpt_path`` only after ``configure_model`` has built the model. Tell the
        interrupt checkpoint how this run was started. Refuse a run folder that holds an
        earlier run's checkpoints unless ``--ckpt_path`` asks to resume (:func:`refuse_unasked_resume`)."""
        self.model.resume_from = self.config[self.subcommand].get("ckpt_path")
        if self.model.resume_from is None:
            refuse_unasked_resume(self.trainer, self.command_line)
        for callback in self.trainer.callbacks:
            if isinstance(callback, InterruptCheckpoint):
                callback.resume_command = self.command_line


def refuse_unasked_resume(trainer: Any, command_line: list[str] | None) -> None:
    """Lightning resumes ``fit`` from the newest ``last*.ckpt`` or interrupt checkpoint of the
    run folder whenever an ``OnExceptionCheckpoint`` is configured (as the recipes' is) and
    no ``--ckpt_path`` is given; ftzoo resumes only when asked.

    Raises:
        OutputPathError: the run folder holds such a checkpoint: naming it, with the command
            that resumes it and how to start a new run instead.
    """
    interrupt = [c for c in trainer.callbacks if isinstance(c, OnExceptionCheckpoint)]
    if not interrupt:
        return
    # the candidates Lightning's _CheckpointConnector._select_ckpt_path takes for ckpt_path="last"
    found = {getattr(c, "ckpt_path", None) for c in interrupt}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            found |= callback._find_last_checkpoints(trainer)
    found = {p for p in found if p and os.path.isfile(p)}
    # an interrupt checkpoint learns its folder (the periodic one's) only when training starts
    found |= {os.path.join(os.path.dirname(p), os.path.basename(c.ckpt_path)) for p in found for c in interrupt}
    found = sorted(p for p in found if os.path.isfile(p))
    if found:
        newest = max(found, key=os.path.getmtime)
        raise OutputPathError(
            f"{os.path.dirname(newest) or '.'} holds checkpoints of an earlier run ({', '.join(map(os.path.basename, found))})"
            f". To resume it, ask for it:\n  {resume_command(command_line, newest)}\nTo start a new run, give it "
            "another folder (--trainer.logger.init_args.version, --trainer.default_root_dir) or remove them."
        )
    for message in LAST_CHECKPOINT_WARNINGS:  # nothing to resume: Lightning's advice about it does not apply
        warnings.filterwarnings("ignore", message=message)


LAST_CHECKPOINT_WARNINGS = (
    r"`\.fit\(ckpt_path=None\)` was called without a model",
    r"\.fit\(ckpt_path=\"last\"\) is set, but there is no last checkpoint available",
)


def _constructor_error(err: BaseException) -> BaseException:
    """The first exception of a ``raise ... from`` chain that jsonargparse did not raise itself:
    what the constructor raised."""
    while err.__cause__ is not None and _raised_in(err, "jsonargparse"):
        err = err.__cause__
    return err


def _raised_in(err: BaseException, package: str) -> bool:
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and f"{package}/" in frame.tb_frame.f_code.co_filename.replace("\\", "/")


def build_cli(args: list[str] | None = None, run: bool = True) -> FtzooCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, for use from Python."""
    command_line = list(sys.argv[1:] if args is None else args)
    check_config_files(command_line)
    # The resolved list is given to LightningCLI as ``args``, which it then parses instead of
    # sys.argv; its warning that ``args`` is meant for use from Python does not apply.
    args = resolve_optimizer_names(resolve_method_names(command_line))
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return FtzooCLI(
        FineTuneModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True, "inputs": _config_paths(command_line)},
        auto_configure_optimizers=False,  # the module builds its optimizer over the trainable parameters only
        parser_kwargs={"parser_mode": "ftzoo"},
        command_line=command_line,
    )


USER_ERRORS = (
    AdapterError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    ModelLoadError,
    NonFiniteLossError,
    OutputPathError,
    PluginError,
    UnsupportedWeightError,
)
"""Errors that name a wrong input or a fault and what to do; ``lightning`` prints them
without a traceback."""


DEBUG_ENV = "FTZOO_DEBUG"
"""Set (``FTZOO_DEBUG=1``) to see the traceback of an error ``lightning`` and the tools print in one line."""

TOOL_ERRORS = (*USER_ERRORS, FileExistsError, FileNotFoundError, ValueError)
"""What the tools (``python -m tools.*``) print as one line: wrong inputs (a bad option is a
``ValueError``), outputs in the way, missing files."""


@contextlib.contextmanager
def one_line_errors(errors: tuple[type[BaseException], ...] = TOOL_ERRORS) -> Iterator[None]:
    """Turn a user error into one ``error: <message>`` line and exit status 1, as ``lightning``
    prints them; the traceback only with ``FTZOO_DEBUG=1``. For the tools' command lines."""
    try:
        yield
    except errors as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        sys.exit(f"error: {err}")


def main() -> None:
    """Entry point of the ``lightning`` console script."""
    logging.basicConfig(format="%(message)s")
    for name in ("zoo", "datamodules", "plugins"):  # data summaries and method reports
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        with one_line_errors(USER_ERRORS):  # a wrong input: its message says what and where, a traceback adds nothing
            build_cli()
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        sys.exit(f"error: {err}")  # what was kept, and how to resume, is printed above it
    except KeyboardInterrupt:  # Ctrl-C outside training (Lightning handles it inside, with its checkpoint)
        print("\nStopped (Ctrl-C) while the run was set up: nothing was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
