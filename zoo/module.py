"""The one LightningModule: a Hugging Face causal LM fine-tuned by a pluggable method.

The training story: load the base model, let the method select, rewrite and name what
trains (:mod:`zoo.prepare`), train on the response tokens with the method's backward and
optimizer hooks, and write the method's adapter at the end of ``fit``. Checkpoints hold
only the trainable state plus what rebuilds it (:func:`zoo.checkpoints.identity`).
Evaluation steps come from :mod:`zoo.task_accuracy`, what FSDP changes from :mod:`zoo.distributed`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from zoo import checkpoints, console
from zoo.adapter import META_FILE, Adapter, BaseModelInfo, save_adapter
from zoo.checkpoints import CheckpointMismatchError
from zoo.distributed import check_strategy, unshare_parameters, unwrapped, whole_parameters
from zoo.guard import FitGuard
from zoo.inference.adapters import load_for_evaluation
from zoo.inference.generate import prompt_info
from zoo.loading import load_model, load_tokenizer
from zoo.loss import response_loss
from zoo.method import Method
from zoo.outputs import check_output_folder
from zoo.plugins import method_hooks, method_name
from zoo.precision import slow_bf16_advice
from zoo.prepare import (
    calibration_batches,
    check_untrained_deltas,
    extract_adapter,
    freeze,
    plain_view,
    rewrite,
    select,
)
from zoo.quantization import Quantization, check_method, dequantize, quantize
from zoo.schedule import Decay, apply_configured_settings, parameter_groups, warmup_decay
from zoo.task_accuracy import EvaluationSteps, TaskAccuracy

__all__ = ["CheckpointMismatchError", "FineTuneModule"]  # the error, for callers that catch it here

console.quiet()  # Lightning's tips and its own deprecation warning (zoo.console)


class FineTuneModule(EvaluationSteps, L.LightningModule):
    """Fine-tune a causal LM with a method plugin.

    Args:
        model: base model: an alias (``smollm2-135m``), a ``.gguf`` file, a local folder
            or a Hugging Face model id.
        method: the fine-tuning method (class path + init args, or a registered name such
            as ``s2ft``). ``None`` evaluates the base model (or ``adapter``) as it is.
        adapter: a trained adapter folder to evaluate or predict with (validate, test,
            predict); its method is read from the folder. To continue training, resume
            from a checkpoint (``--ckpt_path``).
        optimizer: optimizer over the trainable parameters only (weight decay is not
            applied to 1-D tensors such as norms and biases).
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        lr_decay: learning-rate decay after warm-up, to ``min_lr_ratio`` at the last step.
        min_lr_ratio: final learning rate as a fraction of the peak.
        calibration_batches: training batches a method may score parameters on before
            training (S²FT's activation and gradient selection).
        dtype: dtype of the base weights (with ``quantization``: of everything not quantized,
            and of the matmuls).
        quantization: store the frozen base's linear weights (not the output head) as
            ``nf4`` (4-bit NormalFloat, QLoRA's) or ``int8``, through bitsandbytes
            (:mod:`zoo.quantization`); the method trains beside them, and its adapter applies
            to the unquantized base too. Methods that cannot (full) are refused first. With
            ``adapter`` (validate/test/predict) the adapter is fused into the dequantized
            weights, which computes what the model trained on the quantized base computed.
        attn_implementation: transformers attention implementation (``sdpa``, ``eager``).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        trust_remote_code: allow a model's own Python code (off unless you trust it).
        adapter_dir: where ``fit`` writes the trained adapter; default ``<log_dir>/adapter``.
            Checked before training starts.
        overwrite: let ``fit`` replace an adapter already in ``adapter_dir`` (a folder
            of anything else is never replaced).
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        method: Method | None = None,
        adapter: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 0,
        lr_decay: Decay = "cosine",
        min_lr_ratio: float = 0.0,
        calibration_batches: int = 8,
        dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32",
        quantization: Quantization = "none",
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        adapter_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        self.model_name, self.method, self.adapter_path = model, method, adapter
        self.optimizer_factory, self.warmup_steps = optimizer, warmup_steps
        self.lr_decay, self.min_lr_ratio = lr_decay, min_lr_ratio
        self.calibration_batches = calibration_batches
        self.dtype_name, self.attn_implementation = dtype, attn_implementation
        self.quantization = quantization
        self.gradient_checkpointing, self.trust_remote_code = gradient_checkpointing, trust_remote_code
        self.adapter_dir, self.overwrite = adapter_dir, overwrite
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model: nn.Module | None = None
        self.selection: Any = None
        self.trainable_shapes: dict[str, torch.Size] = {}  # by parameter name, as the method built them
        self.base_info: BaseModelInfo | None = None
        self.accuracy = TaskAccuracy()
        self.strict_loading = False  # checkpoints hold the trainable state only
        self.hooks = method_hooks(method)
        self.resume_from: str | None = None
        """The ``--ckpt_path`` of this fit, set by the CLI before ``fit`` (Lightning makes
        ``trainer.ckpt_path`` known only after ``configure_model``), so the stored selection
        is rebuilt without selecting (and scoring calibration batches) first."""

    # ------------------------------------------------------------------ building the model

    def configure_model(self) -> None:
        """Load the base, then let the method select and rewrite (or load an adapter)."""
        if self.model is not None:
            return
        check_strategy(self.trainer.strategy if self._trainer is not None else None)
        self._build(selection=checkpoints.stored_selection(self.resume_from))

    def _build(self, selection: Any) -> None:
        stage = self.trainer.state.fn if self._trainer is not None else None
        if self.method is not None and self.adapter_path is None:
            check_method(self.hooks, method_name(self.method), self.quantization)  # before loading anything
        model = freeze(load_model(self.model_name, self.dtype_name, self.attn_implementation, self.trust_remote_code))
        self.base_info = BaseModelInfo.of(model, self.model_name)  # the unquantized base's identity
        self.base_parameter_count = sum(p.numel() for p in model.parameters())
        quantize(model, self.quantization)
        if self.adapter_path is not None:  # evaluate Q(W) + adapter: fused into the dequantized weights
            dequantize(model)
        if self._trainer is not None and not isinstance(self.trainer.strategy, FSDPStrategy):
            model.to(self.trainer.strategy.root_device)  # FSDP moves each unit to the device as it shards it
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.model = model.train()  # from_pretrained returns eval mode; Lightning switches for evaluation
        if self.adapter_path is not None:
            if stage == "fit":
                raise ValueError("model.adapter is for validate/test/predict; to continue a run use --ckpt_path")
            self.method, self.hooks, adapter = load_for_evaluation(model, self.adapter_path, self.method, self.base_info)
            self.selection = adapter.selection
        elif self.method is not None:
            self.selection = self._select() if selection is None else selection
            plain = plain_view(model) if stage == "fit" and self.quantization == "none" else None
            trainable = rewrite(self.hooks, self.method, model, self.selection)
            if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
                unshare_parameters(model)  # FSDP flattens parameters: no view of another one
            if plain is not None:  # a method whose deltas are not differences is refused before the first step
                check_untrained_deltas(self.hooks, self.method, model, self.selection, self.base_info, plain)
            # Shapes before wrapping: FSDP later holds parameters as flat 1-D shards.
            self.trainable_shapes = {name: p.shape for name, p in trainable}
        elif stage == "fit":
            raise ValueError("choose a method to fit with --model.method (e.g. --model.method s2ft)")

    def _select(self) -> Any:
        """Run the method's selection on rank 0 and broadcast it, so every rank agrees."""
        selection = None
        if self._trainer is None or self.trainer.is_global_zero:
            seed = torch.initial_seed() % 2**31  # set by seed_everything
            batches = calibration_batches(self.trainer.datamodule, self.calibration_batches, self.model)
            selection = select(self.hooks, self.method, self.model, batches, seed)
        if self._trainer is not None:
            selection = self.trainer.strategy.broadcast(selection, src=0)
        return selection

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self.hooks.ftzoo_trainable_parameters(model=self.model)

    # ------------------------------------------------------------------ training

    def _new_optimizer(self) -> torch.optim.Optimizer:
        shapes = {name: self.trainable_shapes.get(unwrapped(name), p.shape) for name, p in self.trainable_parameters()}
        return self.optimizer_factory(parameter_groups(self.trainable_parameters(), shapes))

    def configure_optimizers(self) -> Any:
        optimizer = self._new_optimizer()
        schedule = warmup_decay(
            self.warmup_steps, int(self.trainer.estimated_stepping_batches), self.lr_decay, self.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        trainable = sum(math.prod(shape) for shape in self.trainable_shapes.values())  # not the local shards
        self.trainable_parameter_count = trainable
        rank_zero_info(
            f"{method_name(self.method)}: training {trainable:,} of the base model's "
            f"{self.base_parameter_count:,} parameters ({trainable / self.base_parameter_count:.3%})"
        )
        self._fit_started = time.monotonic()
        self._warn_if_bf16_is_slow()

    def on_test_start(self) -> None:
        self._warn_if_bf16_is_slow()

    def _warn_if_bf16_is_slow(self) -> None:
        """bf16 on a CPU without native bf16 is tens of times slower than float32: say so before the run."""
        advice = slow_bf16_advice(str(self.trainer.precision), self.device)
        if advice is not None:
            rank_zero_warn(advice)

    def on_train_start(self) -> None:
        """On resume, this run's optimizer settings (learning rate, weight decay, ...) replace
        the checkpoint's, and the user is told which (:func:`zoo.schedule.apply_configured_settings`)."""
        if self.trainer.ckpt_path is None or not self.trainer.lr_scheduler_configs:
            return
        changed = apply_configured_settings(
            self.trainer.optimizers[0], self._new_optimizer(), self.trainer.lr_scheduler_configs[0].scheduler
        )
        if changed:
            rank_zero_info(
                f"Resuming with this run's optimizer settings, not the checkpoint's: {', '.join(changed)} (the "
                "optimizer's moments, the step count and the schedule's position are the checkpoint's)"
            )

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return response_loss(self.model, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.hooks.ftzoo_before_backward(model=self.model, loss=loss)

    def on_after_backward(self) -> None:
        self.hooks.ftzoo_after_backward(model=self.model)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.hooks.ftzoo_before_optimizer_step(model=self.model, optimizer=optimizer)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.hooks.ftzoo_after_optimizer_step(model=self.model)

    # ------------------------------------------------------------------ checkpoints and adapters

    def _identity(self) -> dict[str, Any]:
        method, config = (method_name(self.method), self.method.config()) if self.method else (None, None)
        return checkpoints.identity(method, config, self.selection, self.base_info)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.keep_trainable_state(checkpoint, self._state_keys())
        checkpoint["ftzoo"] = self._identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoints.selection_differs(checkpoint, self._identity(), self.base_info):
            checkpoints.check_rebuildable(self.trainer.strategy)
            rank_zero_info("The checkpoint's selection differs from this run's; rebuilding the model with it.")
            self.model = None
            self._build(selection=checkpoint["ftzoo"]["selection"])
        checkpoints.check_trainable_state(checkpoint, self._state_keys())

    def _state_keys(self) -> set[str]:
        """State-dict keys of the trainable parameters, as in the unwrapped model."""
        return {f"model.{unwrapped(name)}" for name, _ in self.trainable_parameters()}

    def extract_adapter(self) -> Adapter:
        """The trained update as an :class:`Adapter` (in base coordinates)."""
        info = {"trainable_parameters": getattr(self, "trainable_parameter_count", None)}
        if self._trainer is not None:
            info["global_step"] = self.trainer.global_step
            info.update(prompt_info(self.trainer.datamodule))
        return extract_adapter(self.hooks, self.method, self.model, self.selection, self.base_info, info)

    def configure_callbacks(self) -> list[L.Callback]:
        """The output-path check, atomic checkpoints and the non-finite stop (:mod:`zoo.guard`)."""
        return [FitGuard()]

    def adapter_output(self) -> Path:
        """Where ``fit`` writes the adapter. Every rank calls it: ``trainer.log_dir`` is a
        collective (a broadcast from rank 0)."""
        return Path(self.adapter_dir or Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapter")

    def on_fit_end(self) -> None:
        folder = self.adapter_output()
        with whole_parameters(self.trainer.strategy, self.model):  # every rank gathers; rank 0 writes
            adapter = self.extract_adapter() if self.trainer.is_global_zero else None
        if adapter is not None:
            # again: another writer (a tool) may have put something there while this run trained; the
            # refusal stops fit with an error, so the interrupt checkpoint keeps the trained weights
            check_output_folder(folder, self.overwrite, META_FILE, flag="--model.overwrite true")
            adapter.info["train_minutes"] = round((time.monotonic() - self._fit_started) / 60, 2)
            save_adapter(adapter, folder, hooks=self.hooks)
            rank_zero_info(f"Adapter written to {folder}")
        self.trainer.strategy.barrier("ftzoo_adapter_written")

