"""The checks ``FineTuneModule`` adds to every run, so a fit loses no work to a fault.

:class:`FitGuard` is returned by ``FineTuneModule.configure_callbacks``:

* before anything loads, it refuses an adapter folder that ``fit`` could not write or must
  not replace (:func:`zoo.outputs.check_output_folder`), instead of failing after training,
  and claims it (:func:`zoo.outputs.claim_folder`) until the run ends, so that a second run
  given the same folder is refused before it trains;
* it gives plain strategies atomic checkpoint files (:class:`zoo.checkpoints.AtomicCheckpointIO`);
* it stops training when the loss or a gradient becomes NaN or infinite, *before* the
  optimizer step, so the weights (and the checkpoint an ``InterruptCheckpoint`` writes on
  the error) are the last good ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from zoo.adapter import META_FILE
from zoo.checkpoints import use_atomic_io
from zoo.outputs import OutputPathError, check_output_folder, claim_folder, release_claim

ADVICE = "lower the learning rate, warm up longer or clip gradients (--trainer.gradient_clip_val 1.0)"


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or infinite; training stopped before the update."""


class FitGuard(Callback):
    """Output check, atomic checkpoints and a non-finite stop (see the module docstring)."""

    def __init__(self) -> None:
        self.claim: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        use_atomic_io(trainer.strategy)
        if stage == "fit":
            folder = pl_module.adapter_output()  # a collective: every rank asks
            check_output_folder(folder, pl_module.overwrite, META_FILE, flag="--model.overwrite true")
            log_dir, refusal = trainer.log_dir, None  # log_dir is a collective too: every rank, in the same order
            if trainer.is_global_zero:
                try:
                    self.claim = claim_folder(folder, owner=f"lightning fit, logging to {log_dir}")
                except OutputPathError as err:
                    refusal = str(err)
            refusal = trainer.strategy.broadcast(refusal)  # every rank stops, not only the one that knows
            if refusal is not None:
                raise OutputPathError(refusal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        release_claim(self.claim)
        self.claim = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"the training loss became {loss.detach().float().item()} at step {trainer.global_step + 1}; "
                f"training stopped before that update, so the weights are the last good ones. To go on, {ADVICE}"
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # float16 loss scaling skips steps with infinite gradients itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise NonFiniteLossError(
                f"a gradient became NaN or infinite at step {trainer.global_step + 1} (the loss was finite); "
                f"training stopped before that update, so the weights are the last good ones. To go on, {ADVICE}"
            )
