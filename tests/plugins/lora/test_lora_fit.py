"""LoRA through ``lightning fit``: the run's adapter folder loads in PEFT as the trained model."""

from __future__ import annotations

import pytest

import torch
from method_harness import batches, fit_args, logits
from peft import PeftModel
from transformers import AutoModelForCausalLM

from zoo.cli import build_cli

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


def test_fit_writes_a_peft_loadable_adapter(tiny_llama_dir, tmp_path):
    extra = ["--model.method.init_args.r", "4", "--model.method.init_args.alpha", "8"]
    cli = build_cli(fit_args(tiny_llama_dir, tmp_path, 3, "lora", *extra))
    folder = tmp_path / "run" / "version_0" / "adapter"
    assert {"adapter.json", "adapter.safetensors", "adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    trained = cli.model.model.eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder)
    batch = batches(count=1)[0]
    torch.testing.assert_close(logits(peft_model, batch), logits(trained, batch), rtol=0, atol=1e-5)
