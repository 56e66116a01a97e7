"""The method tests' helpers: the harness of :mod:`zoo.testing.harness` (which prepares and
trains a method as ``fit`` does) and the arguments of a short ``lightning fit``."""

from __future__ import annotations

from zoo.testing.harness import Trained, base_model, batches, logits, train, train_steps  # noqa: F401


def fit_args(model_dir, root, max_steps: int, method: str, *extra: str) -> list[str]:
    """``lightning fit`` arguments for a short run of ``method`` on generated arithmetic."""
    return [
        "fit",
        "--seed_everything", "7",
        "--model.model", str(model_dir),
        "--model.method", method,
        "--model.optimizer", "torch.optim.AdamW",
        "--model.optimizer.lr", "1e-2",
        "--model.calibration_batches", "2",
        "--data", "datamodules.ArithmeticDataModule",
        "--data.num_train", "32",
        "--data.num_val", "4",
        "--data.batch_size", "4",
        "--data.max_length", "256",
        "--data.prompt_style", "chat",
        "--trainer.accelerator", "cpu",
        "--trainer.max_steps", str(max_steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(root),
        "--trainer.logger.name", "run",
        "--trainer.logger.version", "0",
        *extra,
    ]  # fmt: skip
