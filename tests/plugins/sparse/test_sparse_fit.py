"""Sparse masks through ``lightning fit``: gradient masks on the run's own batches, and a
resumed run that rebuilds the same mask from the checkpoint's selection."""

from __future__ import annotations

import pytest

import torch
from method_harness import fit_args

from zoo import load_adapter
from zoo.cli import build_cli

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end

SPARSE = ["--model.method.init_args.density", "0.02", "--model.method.init_args.strategy", "gradient"]
EVERY_2 = ["--trainer.callbacks", "ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "2",
           "--trainer.callbacks.save_top_k", "-1"]  # fmt: skip


def test_gradient_mask_fit_and_exact_resume(tiny_llama_dir, tmp_path):
    build_cli(fit_args(tiny_llama_dir, tmp_path / "straight", 4, "sparse", *SPARSE, *EVERY_2))
    straight = load_adapter(tmp_path / "straight" / "run" / "version_0" / "adapter")
    assert straight.selection["strategy"] == "gradient"
    checkpoint = tmp_path / "straight" / "run" / "version_0" / "checkpoints" / "epoch=0-step=2.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["ftzoo"]["selection"] == straight.selection
    assert all(name.endswith(".mask_values") for name in state["state_dict"])

    build_cli(fit_args(tiny_llama_dir, tmp_path / "resumed", 4, "sparse", *SPARSE, "--ckpt_path", str(checkpoint)))
    resumed = load_adapter(tmp_path / "resumed" / "run" / "version_0" / "adapter")
    assert resumed.selection == straight.selection
    for name, tensor in straight.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor, rtol=1e-5, atol=1e-6)
