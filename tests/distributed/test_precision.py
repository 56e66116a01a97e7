"""Mixed precision with gradient accumulation, for every method: bf16 autocast, and fp16
autocast with dynamic loss scaling (``torch.amp.GradScaler``), on one CPU process.

Lightning turns ``precision="16-mixed"`` on CPU into bf16 (``_AcceleratorConnector``), so the fp16
run passes the precision plugin itself: ``MixedPrecision("16-mixed", device="cpu")`` is what
``--trainer.precision 16-mixed`` builds on a GPU (with ``device="cuda"``), scaler included.
"""

from __future__ import annotations

import json

import pytest
from dist_runs import METHOD_ARGS, adapter_tensors, fit_args, largest_update, registered

from zoo.cli import build_cli

FP16_WITH_SCALER = {"class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
                    "init_args": {"precision": "16-mixed", "device": "cpu"}}  # fmt: skip
PRECISIONS = {
    "bf16-mixed": ["--trainer.precision", "bf16-mixed"],
    "fp16-mixed": ["--trainer.plugins", json.dumps([FP16_WITH_SCALER])],
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", METHOD_ARGS)
def test_mixed_precision_with_accumulation_trains(method, precision, tiny_llama_dir, equal_length_data, tmp_path):
    registered(method)
    extra = [*PRECISIONS[precision], "--trainer.accumulate_grad_batches", "2"]
    cli = build_cli(fit_args(tiny_llama_dir, equal_length_data, tmp_path, METHOD_ARGS[method], 4, *extra))
    plugin = cli.trainer.precision_plugin
    assert plugin.precision == precision.replace("fp16", "16")
    if precision == "fp16-mixed":
        assert plugin.scaler is not None and 0 < plugin.scaler.get_scale() < float("inf")
    assert cli.trainer.global_step == 4
    assert all(bool(t.isfinite().all()) for t in adapter_tensors(tmp_path / "adapter").values())
    assert largest_update(tmp_path / "adapter") > 1e-4
