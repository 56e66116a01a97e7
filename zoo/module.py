"""The one LightningModule: a Hugging Face causal LM fine-tuned by a pluggable method.

The module never names a method. It loads and freezes the base model, lets the method
choose and rewrite (:mod:`zoo.hookspecs`), trains what the method names, and writes the
method's adapter at the end of ``fit``. Checkpoints hold only the trainable state plus
what rebuilds it (method, config, selection, base identity).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from zoo.adapter import Adapter, AdapterError, BaseModelInfo, load_adapter, save_adapter
from zoo.checkpoints import LIGHTNING_CKPT_NAMES, read_checkpoint
from zoo.guard import FitGuard
from zoo.evaluation import greedy_config
from zoo.loading import load_model, load_tokenizer
from zoo.method import Method
from zoo.plugins import method_from_config, method_hooks, method_name
from zoo.schedule import Decay, warmup_decay

# Wrapper modules that FSDP, activation checkpointing and torch.compile insert into parameter names.
WRAPPER_NAMES = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
WRAPPED_CHILD = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")  # a wrapper's one child


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was written by another method, config or base model."""


class FineTuneModule(L.LightningModule):
    """Fine-tune a causal LM with a method plugin.

    Args:
        model: base model: an alias (``smollm2-135m``), a ``.gguf`` file, a local folder
            or a Hugging Face model id.
        method: the fine-tuning method (class path + init args, or a registered name such
            as ``s2ft``). ``None`` evaluates the base model (or ``adapter``) as it is.
        adapter: a trained adapter folder to evaluate or predict with (validate, test,
            predict). To continue training, resume from a checkpoint (``--ckpt_path``).
        optimizer: optimizer over the trainable parameters only (weight decay is not
            applied to 1-D tensors such as norms and biases).
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        lr_decay: learning-rate decay after warm-up, to ``min_lr_ratio`` at the last step.
        min_lr_ratio: final learning rate as a fraction of the peak.
        calibration_batches: training batches a method may score parameters on before
            training (S²FT's activation and gradient selection).
        dtype: dtype of the base weights.
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
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        adapter_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.method = method
        self.adapter_path = adapter
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.lr_decay = lr_decay
        self.min_lr_ratio = min_lr_ratio
        self.calibration_batches = calibration_batches
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing
        self.trust_remote_code = trust_remote_code
        self.adapter_dir = adapter_dir
        self.overwrite = overwrite
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model: nn.Module | None = None
        self.selection: Any = None
        self.trainable_shapes: dict[str, torch.Size] = {}  # by parameter name, as the method built them
        self.base_info: BaseModelInfo | None = None
        self.task_accuracy = nn.ModuleDict()
        self.task_names: dict[str, str] = {}
        self.strict_loading = False  # checkpoints hold the trainable state only
        self.hooks = method_hooks(method)

    # ------------------------------------------------------------------ building the model

    def configure_model(self) -> None:
        """Load the base, then let the method select and rewrite (or load an adapter)."""
        if self.model is not None:
            return
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
            raise ValueError(
                "DeepSpeed ZeRO-3 partitions parameters while the base model loads (deepspeed.zero.Init), which "
                "ftzoo's loader does not support; use ZeRO-2 or FSDP (docs/distributed.md) to shard the base"
            )
        self._build(selection=None)

    def _build(self, selection: Any) -> None:
        stage = self.trainer.state.fn if self._trainer is not None else None
        model = load_model(self.model_name, self.dtype_name, self.attn_implementation, self.trust_remote_code)
        self.base_info = BaseModelInfo.of(model, self.model_name)
        self.base_parameter_count = sum(p.numel() for p in model.parameters())
        if self._trainer is not None and not isinstance(self.trainer.strategy, FSDPStrategy):
            model.to(self.trainer.strategy.root_device)  # FSDP moves each unit to the device as it shards it
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.model = model.train()  # from_pretrained returns eval mode; Lightning switches for evaluation
        if self.adapter_path is not None:
            if stage == "fit":
                raise ValueError("model.adapter is for validate/test/predict; to continue a run use --ckpt_path")
            self._apply_adapter(self.adapter_path)
        elif self.method is not None:
            if selection is None:
                selection = self._checkpoint_selection()
            self.selection = self._select() if selection is None else selection
            self.hooks.ftzoo_rewrite_model(model=model, selection=self.selection)
            # Shapes before wrapping: FSDP later holds parameters as flat 1-D shards.
            self.trainable_shapes = {name: p.shape for name, p in self.trainable_parameters()}
        elif stage == "fit":
            raise ValueError("choose a method to fit with --model.method (e.g. --model.method s2ft)")

    def _checkpoint_selection(self) -> Any:
        """The selection stored in the checkpoint this run resumes from, if it is known yet
        (``resume_from`` is set by the CLI); otherwise ``on_load_checkpoint`` rebuilds."""
        path = getattr(self, "resume_from", None)
        if path is None or str(path) in LIGHTNING_CKPT_NAMES:  # Lightning finds these itself
            return None
        checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True, mmap=True)
        return checkpoint.get("ftzoo", {}).get("selection")

    def _apply_adapter(self, path: str) -> None:
        adapter = load_adapter(path)
        adapter.base.check_same(self.base_info, what=f"adapter {path}")
        if self.method is None:
            self.method = method_from_config(adapter.method, adapter.config)
            self.hooks = method_hooks(self.method)
        elif method_name(self.method) != adapter.method:
            raise AdapterError(f"adapter {path} was made by {adapter.method!r}, not by {method_name(self.method)!r}")
        self.selection = adapter.selection
        self.hooks.ftzoo_load_adapter(model=self.model, adapter=adapter)
        rank_zero_info(f"Loaded {adapter.method} adapter {path}")

    def _select(self) -> Any:
        """Run the method's selection on rank 0 and broadcast it, so every rank agrees."""
        selection = None
        if self._trainer is None or self.trainer.is_global_zero:
            seed = torch.initial_seed() % 2**31  # set by seed_everything
            selection = self.hooks.ftzoo_select_parameters(
                model=self.model, calibration_batches=self._calibration_batches, seed=seed
            )
        if self._trainer is not None:
            selection = self.trainer.strategy.broadcast(selection, src=0)
        return selection

    def _calibration_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise RuntimeError("this method scores parameters on training batches, but no data module is attached")
        device = next(self.model.parameters()).device  # the CPU under FSDP, before it shards the model
        for batch in islice(iter(datamodule.train_dataloader()), self.calibration_batches):
            yield {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self.hooks.ftzoo_trainable_parameters(model=self.model)

    # ------------------------------------------------------------------ training

    def configure_optimizers(self) -> Any:
        named = self.trainable_parameters()
        if not named:
            raise RuntimeError(f"method {self.method!r} selected nothing to train")
        ndim = {name: len(self.trainable_shapes.get(_unwrapped(name), p.shape)) for name, p in named}
        decay = [p for name, p in named if ndim[name] >= 2]
        no_decay = [p for name, p in named if ndim[name] < 2]
        groups = [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        optimizer = self.optimizer_factory(groups)
        total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_decay(self.warmup_steps, total_steps, self.lr_decay, self.min_lr_ratio)
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

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], use_cache=False
        )
        return out.loss

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

    # ------------------------------------------------------------------ evaluation

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        eval_stage = "test" if stage == "test" else "validate"
        if datamodule is None or not hasattr(datamodule, "eval_tasks") or stage == "predict":
            return
        for task in datamodule.eval_tasks(eval_stage):
            key = re.sub(r"[^0-9A-Za-z_]", "_", task)
            self.task_names[key] = task
            if key not in self.task_accuracy:
                self.task_accuracy[key] = MeanMetric()

    def _generate(self, batch: dict[str, Any]) -> list[str]:
        prompt = batch["prompt_input_ids"]
        config = greedy_config(self.tokenizer, self.trainer.datamodule.max_new_tokens)
        out = self.model.generate(input_ids=prompt, attention_mask=batch["prompt_attention_mask"], generation_config=config)
        return self.tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)

    def _evaluation_step(self, batch: dict[str, Any], prefix: str) -> None:
        size = batch["input_ids"].shape[0]
        self.log(f"{prefix}/loss", self._loss(batch), prog_bar=True, batch_size=size, sync_dist=True)
        datamodule = self.trainer.datamodule
        for task, text, answer in zip(batch["tasks"], self._generate(batch), batch["answers"]):
            key = re.sub(r"[^0-9A-Za-z_]", "_", task)
            self.task_accuracy[key].update(float(datamodule.is_correct(task, text, answer)))

    def _log_accuracy(self, prefix: str) -> None:
        scores = {}
        for key, metric in self.task_accuracy.items():
            if metric.update_count > 0:
                scores[self.task_names[key]] = metric.compute().item()
            metric.reset()
        if not scores or self.trainer.sanity_checking:
            return
        for task, score in scores.items():
            self.log(f"{prefix}/acc/{task}", score, rank_zero_only=True)
        average = sum(scores.values()) / len(scores)
        self.log(f"{prefix}/acc", average, prog_bar=True, rank_zero_only=True)
        self.last_accuracy = {"average": average, **scores}
        lines = "\n".join(f"  {task:<24} {score:7.2%}" for task, score in scores.items())
        rank_zero_info(f"{prefix} accuracy (greedy generation):\n{lines}\n  {'average':<24} {average:7.2%}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        texts = self._generate(batch)
        datamodule = self.trainer.datamodule
        rows = []
        for i, text in enumerate(texts):
            task, answer = batch["tasks"][i], batch["answers"][i]
            row = {"task": task, "prompt": batch["prompts"][i], "generation": text, "answer": answer}
            if answer:
                row["extracted"] = datamodule.extract_answer(task, text)
                row["correct"] = datamodule.is_correct(task, text, answer)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ checkpoints and adapters

    def _checkpoint_identity(self) -> dict[str, Any]:
        return {
            "method": method_name(self.method) if self.method else None,
            "config": self.method.config() if self.method else None,
            "selection": self.selection,
            "base": self.base_info.__dict__ if self.base_info else None,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Keep the trainable entries of the state dict the strategy gathered: under FSDP the local
        # parameters are 1-D shards, the gathered entries whole (and empty off rank 0). DeepSpeed drops
        # this dict and saves the module itself (see exclude_frozen_parameters in its config).
        trainable = {f"model.{_unwrapped(name)}" for name, _ in self.trainable_parameters()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["ftzoo"] = self._checkpoint_identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("ftzoo")
        if saved is None:
            raise CheckpointMismatchError("not an ftzoo checkpoint (it has no 'ftzoo' entry)")
        current = self._checkpoint_identity()
        for key in ("method", "config"):
            if _canonical(saved[key]) != _canonical(current[key]):
                raise CheckpointMismatchError(
                    f"the checkpoint was trained with {key} {saved[key]!r}, this run has {current[key]!r}"
                )
        BaseModelInfo(**saved["base"]).check_same(self.base_info, what="the checkpoint")
        if _canonical(saved["selection"]) != _canonical(current["selection"]):
            if self.trainer.strategy.restore_checkpoint_after_setup:  # FSDP, DeepSpeed: already wrapped
                raise CheckpointMismatchError(
                    f"the checkpoint's selection differs from this run's, and {type(self.trainer.strategy).__name__} "
                    "has already sharded the model, so it cannot be rebuilt; resume with the same method config, "
                    "seed and data, or under DDP"
                )
            rank_zero_info("The checkpoint's selection differs from this run's; rebuilding the model with it.")
            self.model = None
            self._build(selection=saved["selection"])
        if "state_dict" not in checkpoint:
            return  # FSDP and DeepSpeed load the tensors themselves and pass on the rest
        expected = {f"model.{_unwrapped(name)}" for name, _ in self.trainable_parameters()}
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise CheckpointMismatchError(f"the checkpoint lacks trainable tensors: {sorted(missing)[:5]}")

    def extract_adapter(self) -> Adapter:
        """The trained update as an :class:`Adapter` (in base coordinates)."""
        tensors = self.hooks.ftzoo_extract_adapter(model=self.model, selection=self.selection)
        info = {"trainable_parameters": getattr(self, "trainable_parameter_count", None)}
        if self._trainer is not None:
            info["global_step"] = self.trainer.global_step
        return Adapter(
            method=method_name(self.method),
            config=self.method.config(),
            selection=self.selection,
            base=self.base_info,
            # copies: gathered (FSDP) parameters live only inside the gathering context
            tensors={k: v.detach().to("cpu", copy=True) for k, v in tensors.items()},
            info=info,
        )

    def configure_callbacks(self) -> list[L.Callback]:
        """The output-path check, atomic checkpoints and the non-finite stop (:mod:`zoo.guard`)."""
        return [FitGuard()]

    def adapter_output(self) -> Path:
        """Where ``fit`` writes the adapter. Every rank calls it: ``trainer.log_dir`` is a
        collective (a broadcast from rank 0)."""
        return Path(self.adapter_dir or Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapter")

    def on_fit_end(self) -> None:
        folder = self.adapter_output()
        with self._whole_parameters():  # every rank takes part in gathering; rank 0 extracts and writes
            adapter = self.extract_adapter() if self.trainer.is_global_zero else None
        if adapter is not None:
            adapter.info["train_minutes"] = round((time.monotonic() - self._fit_started) / 60, 2)
            save_adapter(adapter, folder, hooks=self.hooks)
            rank_zero_info(f"Adapter written to {folder}")
        self.trainer.strategy.barrier("ftzoo_adapter_written")

    @contextmanager
    def _whole_parameters(self) -> Iterator[None]:
        """Whole parameters on rank 0, under the plain model's module names, for the duration.

        FSDP keeps every parameter as a 1-D shard outside forward and backward, and its wrappers
        (and activation checkpointing's) insert ``_fsdp_wrapped_module.`` into module names, which
        methods match against (PEFT does). DDP and DeepSpeed ZeRO-1/2 need neither.
        """
        strategy = self.trainer.strategy
        if not isinstance(strategy, FSDPStrategy):
            yield
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        offload = strategy.root_device.type != "cpu"  # gather unit by unit into host memory
        with (
            FullyShardedDataParallel.summon_full_params(
                strategy.model, writeback=False, rank0_only=True, offload_to_cpu=offload
            ),
            _without_wrappers(self.model),
        ):
            yield


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _unwrapped(name: str) -> str:
    """A parameter name as in the unwrapped model (without FSDP, checkpointing or compile wrappers)."""
    return WRAPPER_NAMES.sub("", name)


@contextmanager
def _without_wrappers(model: nn.Module) -> Iterator[None]:
    """Put every wrapped module in its wrapper's place in the parent for the duration, then restore."""
    swapped = []
    for parent in [m for m in model.modules() if _wrapped_child(m) is None]:
        for name, child in list(parent.named_children()):
            inner = child
            while _wrapped_child(inner) is not None:
                inner = _wrapped_child(inner)
            if inner is not child:
                swapped.append((parent, name, child))
                parent._modules[name] = inner
    try:
        yield
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


def _wrapped_child(module: nn.Module) -> nn.Module | None:
    return next((module._modules[key] for key in WRAPPED_CHILD if key in module._modules), None)
