"""The trainer fragments in ``configs/distributed/``: each composes with a recipe (a second
``--config``) and builds Lightning's strategy with the settings its comments promise.

GPU fragments are built here with ``accelerator=cpu`` and 2 devices (FSDP through the test-only
``cpu_fsdp.CPUFSDPStrategy``); ``ddp_cpu.yaml`` also trains for real in ``test_ddp_run.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_runs import REPO, fit_args
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from zoo.cli import FtzooCLI, build_cli

FRAGMENTS = sorted((REPO / "configs" / "distributed").glob("*.yaml"))
RECIPE = REPO / "configs" / "smollm2" / "math.yaml"
STRATEGIES = {
    "ddp.yaml": DDPStrategy,
    "ddp_cpu.yaml": DDPStrategy,
    "fsdp.yaml": FSDPStrategy,
    "deepspeed_zero2.yaml": DeepSpeedStrategy,
}


def test_every_fragment_is_tested():
    assert sorted(p.name for p in FRAGMENTS) == sorted(STRATEGIES)


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_fragment_changes_only_the_trainer_of_a_recipe(fragment, monkeypatch):
    """Parsed and validated against the classes' signatures, nothing built (no GPU, no model)."""
    monkeypatch.setattr(FtzooCLI, "instantiate_classes", lambda self: None)
    alone = build_cli(["--config", str(RECIPE)], run=False).config
    both = build_cli(["--config", str(RECIPE), "--config", str(fragment)], run=False).config
    assert both.model == alone.model and both.data == alone.data
    assert both.trainer.strategy != alone.trainer.strategy
    for kept in ("max_epochs", "accumulate_grad_batches", "logger"):  # the recipe's own trainer settings
        assert both.trainer[kept] == alone.trainer[kept]


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_fragment_builds_its_strategy(fragment: Path, tiny_llama_dir, equal_length_data, tmp_path):
    if fragment.name.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeedStrategy needs the deepspeed package")
    on_cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    if fragment.name == "fsdp.yaml":  # Lightning refuses FSDPStrategy itself without CUDA
        on_cpu += ["--trainer.strategy.class_path", "cpu_fsdp.CPUFSDPStrategy"]
    args = fit_args(tiny_llama_dir, equal_length_data, tmp_path, ["--model.method", "full"], 4)[1:]  # no "fit"
    cli = build_cli([*args, "--config", str(fragment), *on_cpu], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, STRATEGIES[fragment.name])
    if fragment.name == "fsdp.yaml":
        assert strategy.kwargs["use_orig_params"] is True
        assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
        for policy in (
            strategy.kwargs["auto_wrap_policy"],
            strategy._activation_checkpointing_kwargs["auto_wrap_policy"],
        ):
            assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {LlamaDecoderLayer}
    if fragment.name.startswith("deepspeed"):
        assert strategy.config["zero_optimization"]["stage"] == 2 and strategy.exclude_frozen_parameters
    if fragment.name == "ddp.yaml":
        assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True
