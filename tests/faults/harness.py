"""What the fault tests share: a short quickstart fit on the tiny model, and faults to inject.

The fits run the shipped quickstart recipe (``configs/quickstart.yaml``, so its checkpoint
callbacks are the ones under test) on the tiny Llama, with 24 generated problems in
batches of 8: three steps per epoch, a checkpoint every 25 steps as shipped (so only the
interrupt and end-of-run checkpoints matter here).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from lightning.pytorch import Callback
from locations import REPO


def quickstart_args(model_dir: Path, root: Path, max_steps: int, *extra: str) -> list[str]:
    """``lightning fit --config configs/quickstart.yaml`` on the tiny model, logging under ``root``."""
    return [
        "fit",
        "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--model.model", str(model_dir),
        "--model.warmup_steps", "2",
        "--data.init_args.num_train", "24",
        "--data.init_args.max_length", "256",
        "--trainer.max_steps", str(max_steps),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.logger.init_args.version", "0",
        *extra,
    ]  # fmt: skip


def run_dir(root: Path) -> Path:
    """The run folder of :func:`quickstart_args` (the recipe names it ``quickstart``)."""
    return root / "quickstart" / "version_0"


class SigintAt(Callback):
    """Send this process a real SIGINT (what Ctrl-C sends) in the middle of optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGINT)


class SigtermAt(SigintAt):
    """Send this process SIGTERM (what a scheduler or ``kill`` sends) in the middle of step ``step``."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGTERM)


class SigintTwiceAt(SigintAt):
    """Ctrl-C twice in the middle of step ``step`` (before its update), as an impatient user does."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)


class _SigintWhileSaving(Callback):
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.interrupted:  # the interrupt checkpoint, not a periodic one
            signal.raise_signal(signal.SIGINT)


class SigintWhileSavingAt(_SigintWhileSaving, SigintAt):
    """Ctrl-C in step ``step``, and again while the interrupt checkpoint it asked for is made."""


class SigtermThenSigintWhileSavingAt(_SigintWhileSaving, SigtermAt):
    """SIGTERM in step ``step``, then Ctrl-C while the interrupt checkpoint is made."""


@contextlib.contextmanager
def sigint_restored() -> Iterator[None]:
    """Lightning ignores SIGINT after it handles one; give the test process its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


class FitAnotherAt(Callback):
    """At step ``step``, run ``lightning fit`` with :attr:`args` in a child process while this
    run waits, as a second user would; its exit status and stderr go to :attr:`result`."""

    args: ClassVar[list[str]] = []
    result: ClassVar[dict[str, object]] = {}

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            done = subprocess.run([sys.executable, "-m", "zoo.cli", *self.args], capture_output=True, text=True,
                                  cwd=REPO, timeout=300, check=False)  # fmt: skip
            FitAnotherAt.result = {"returncode": done.returncode, "stderr": done.stderr}


class RecordLr(Callback):
    """Keep the learning rate of each optimizer step (of the first parameter group) in :attr:`seen`."""

    seen: ClassVar[dict[int, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        RecordLr.seen[trainer.global_step + 1] = optimizer.param_groups[0]["lr"]
