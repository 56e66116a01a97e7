"""Running fits on one process (in the test process) and on several CPU processes (gloo),
launched the way Lightning launches them.

``lightning fit --trainer.devices 2 --trainer.strategy ddp`` re-runs its own command line
once per extra rank (``_SubprocessScriptLauncher``), so a distributed fit must be a
subprocess: :func:`launch` runs ``python -m zoo.cli fit ...``, either that way or under
``torchrun``. One-process fits go through :func:`zoo.cli.build_cli` in the test process
itself (no start-up cost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoo.adapter import load_adapter
from zoo.cli import build_cli
from zoo.loading import load_model
from zoo.plugins import available_methods, method_from_config, method_hooks

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Set by Lightning's launcher in the processes it starts; a stale one would make a new run
# believe that it is a launched rank.
LAUNCHER_VARIABLES = (
    *("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK"),
    *("LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID"),  # torchrun's
)


def launch(args: list[str], torchrun: bool = False, timeout: float = 300) -> str:
    """Run ``python -m zoo.cli <args>`` in a subprocess; return its output, fail the test on error.

    Args:
        args: the CLI arguments, ``fit`` first.
        torchrun: start both ranks with ``torchrun --standalone --nproc_per_node 2`` (Lightning
            then finds ``TorchElasticEnvironment`` and launches nothing itself) instead of
            letting Lightning re-run the command for rank 1.
        timeout: seconds before the run counts as hung.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    runner = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else []
    command = [sys.executable, *runner, "-m", "zoo.cli", *args]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(command[1:])}` failed ({proc.returncode}):\n{output[-6000:]}")
    return output


def fit_args(model_dir: Path, data_file: Path, out: Path, method: list[str], batch_size: int, *extra: str) -> list[str]:
    """A 4-step fit on one JSONL file, without logger or checkpoints; the adapter goes to ``out/adapter``."""
    return [
        "fit",
        "--seed_everything", "7",
        "--model.model", str(model_dir),
        *method,
        "--model.optimizer", "torch.optim.AdamW",
        "--model.optimizer.lr", "1e-3",
        # large enough that putting a matrix in the wrong weight-decay group shows in the result
        "--model.optimizer.weight_decay", "1.0",
        "--model.adapter_dir", str(out / "adapter"),
        "--data", "datamodules.InstructionDataModule",
        "--data.train_files", f"[{data_file}]",
        "--data.prompt_style", "chat",
        "--data.max_length", "64",
        "--data.batch_size", str(batch_size),
        "--trainer.accelerator", "cpu",
        "--trainer.max_steps", "4",
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(out),
        *extra,
    ]  # fmt: skip


def fit_here(args: list[str]) -> None:
    """Run a one-process fit in the test process."""
    build_cli(args)


def adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter / "adapter.safetensors")


def adapter_meta(adapter: Path) -> dict:
    return json.loads((adapter / "adapter.json").read_text())


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# The rows of every method-parametrized test here (a new method adds one), with the arguments
# that make a run deterministic and its selection independent of the batch layout: no dropout,
# and a selection drawn from the seed or the weights, not from calibration batches (under DDP
# those are rank 0's own micro-batches, which differ between 2 ranks x b and 1 process x 2b).
METHOD_ARGS = {
    # embeddings and one norm per layer frozen: FSDP units then mix frozen and trainable tensors
    "full": ["--model.method", "full", "--model.method.exclude", "embed_tokens|post_attention_layernorm"],
    "s2ft": ["--model.method", "s2ft", "--model.method.strategy", "random"],
    "lora": ["--model.method", "lora", "--model.method.r", "4", "--model.method.dropout", "0.0"],
    "dora": ["--model.method", "dora", "--model.method.r", "4", "--model.method.dropout", "0.0"],
    "sparse": ["--model.method", "sparse", "--model.method.strategy", "random"],
}


def registered(method: str) -> str:
    """Skip the calling test unless ``method`` is registered in ``ftzoo.methods``."""
    if method not in available_methods():
        pytest.skip(f"method {method!r} is not registered in ftzoo.methods (python -m zoo plugins)")
    return method


def largest_update(adapter: Path) -> float:
    """The largest entry of the adapter's update of the base weights (``ftzoo_adapter_deltas``)."""
    loaded = load_adapter(adapter)
    base = load_model(loaded.base.name_or_path, "float32", "sdpa", False)
    hooks = method_hooks(method_from_config(loaded.method, loaded.config))
    deltas = hooks.ftzoo_adapter_deltas(adapter=loaded, model=base)
    return max(d.abs().max().item() for d in deltas.values())
