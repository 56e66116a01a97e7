"""tools/bench/train.py: exact memory counting and a tiny end-to-end run, every method through its plugin."""

from __future__ import annotations

import json

import pytest
import torch

from tools.bench.measure import count_memory
from tools.bench.train import bench_train

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


def test_count_memory_is_exact_on_a_hand_built_model():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.ReLU(), torch.nn.Linear(16, 4, bias=False))
    model.requires_grad_(False)
    model[2].weight.requires_grad_(True)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return type("Out", (), {"loss": self.net(x).square().mean()})

    x = torch.randn(3, 8)
    memory = count_memory(Wrapper(), [model[2].weight], {"x": x})
    assert memory["weights"] == (8 * 16 + 16 * 4) * 4
    assert memory["gradients"] == 16 * 4 * 4
    assert memory["optimizer"] == 2 * 16 * 4 * 4 + 4  # exp_avg, exp_avg_sq and the step counter
    # Saved: the ReLU output (input of the trained layer; ReLU saves the same storage) and
    # the square's input; the first linear layer is frozen and its input needs no gradient.
    assert memory["activations"] == (3 * 16 + 3 * 4) * 4


def test_tensors_saved_by_a_branch_the_forward_pass_drops_are_not_counted():
    """As peft's DoRA does with its weight norm: computed with autograd, then detached. Those saved
    tensors are freed before backward (and their addresses reused, which made the count vary)."""
    weight = torch.nn.Parameter(torch.randn(64, 32))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = weight

        def forward(self, x):
            for _ in range(20):  # each branch saves a [64, 32] tensor (pow's input), then is dropped
                norm = (self.weight * 3).pow(2).sum(dim=1).sqrt().detach()
            h = x @ self.weight.t() / norm
            return type("Out", (), {"loss": h.square().mean()})

    x = torch.randn(5, 32)
    memory = count_memory(Model(), [weight], {"x": x})
    # Saved by the kept graph: x (for the weight's gradient), the last norm (the divisor) and h
    # (the square's input); before, all 20 dropped branches counted too (170,880 bytes).
    assert memory["activations"] == (5 * 32 + 64 + 5 * 64) * 4


def test_bench_train_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    results = bench_train(
        output=str(out),
        device="cpu",
        memory_layers=(1,),
        seq_lens=(64,),
        batch_sizes=(1,),
        time_layers=1,
        time_seq_len=8,
        time_batch_size=1,
        steps=1,
        warmup=0,
        quiet=True,
    )
    assert json.loads(out.read_text())["ratios"] == results["ratios"]
    row = results["memory"][0]["bytes"]
    assert set(row) == {
        "full", "lora", "lora_d0", "lora_fp32", "dora", "dora_fp32", "sparse", "s2ft", "peft_lora", "peft_dora",
        "frozen", "s2ft_nf4", "qlora", "qlora_d0", "frozen_nf4",
    }  # fmt: skip
    # ftzoo's LoRA and DoRA are raw peft's layers with adapters in the model's dtype: the same bytes
    assert row["lora"] == row["peft_lora"] and row["dora"] == row["peft_dora"]
    # float32 master values: 2× the adapter bytes; DoRA's dropout path keeps no float32 copy of the weights
    # (raw peft's would: 562 MB here), only float32 copies of the adapted inputs
    assert row["lora_fp32"]["gradients"] == 2 * row["lora"]["gradients"]
    adapted = (3 * 4096 * 4096 + 2 * 4096 * 11008) * 4  # q, k, v, up, down in float32
    assert 0 < row["dora_fp32"]["activations"] - row["dora"]["activations"] < adapted / 8
    # S²FT trains its slices inside the weights (in place): no byte of weights beyond the frozen base
    assert row["s2ft"]["weights"] == row["frozen"]["weights"]
    # the NF4 rows hold the same trainable state on a base of about a quarter of the bytes (+ block scales)
    assert row["s2ft_nf4"]["gradients"] == row["s2ft"]["gradients"] and row["qlora"]["optimizer"] == row["lora"]["optimizer"]
    assert row["s2ft_nf4"]["activations"] == row["s2ft"]["activations"]
    linear_bf16 = (4 * 4096 * 4096 + 3 * 4096 * 11008) * 2  # q, k, v, o, gate, up, down of the one block
    saved = row["frozen"]["weights"] - row["frozen_nf4"]["weights"]
    assert 0.74 * linear_bf16 < saved < 0.75 * linear_bf16  # 4.13 bits of 16 per weight: 1 - 4.13 / 16 = 0.742
    assert "s2ft_nf4/frozen_nf4" in results["ratios"]["memory"][0] and "s2ft_nf4/qlora" in results["ratios"]["memory"][0]
    described = results["trainable"]["memory_1_layers"]
    assert described["lora"]["what"].startswith("LoRA(") and described["s2ft"]["what"].startswith("S2FT(")
    assert row["s2ft"]["gradients"] * 1.0 == results["trainable"]["memory_1_layers"]["s2ft"]["parameters"] * 2  # bf16
    assert (
        row["s2ft"]["activations"]
        < row["frozen"]["activations"]
        < row["lora_d0"]["activations"]
        < row["lora"]["activations"]
    )
    assert max(row["s2ft"]["total"], row["lora"]["total"]) < row["full"]["total"] / 3
    assert results["time"]["s2ft"]["step"] > 0
