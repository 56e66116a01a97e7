"""`lightning fit|validate` end to end on a tiny random Llama: loss falls, resume is exact."""

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file

from zoo.cli import build_cli

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


def fit_args(model_dir: Path, root: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--seed_everything", "7",
        "--model.model", str(model_dir),
        "--model.method", "full",
        "--model.optimizer", "torch.optim.AdamW",
        "--model.optimizer.lr", "3e-3",
        "--model.warmup_steps", "2",
        "--data", "datamodules.ArithmeticDataModule",
        "--data.num_train", "96",
        "--data.num_val", "8",
        "--data.batch_size", "8",
        "--data.max_length", "256",
        "--data.prompt_style", "chat",
        "--trainer.accelerator", "cpu",
        "--trainer.max_steps", str(max_steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(root),
        "--trainer.logger.name", "run",
        "--trainer.logger.version", "0",
        *extra,
    ]  # fmt: skip


def train_losses(root: Path) -> dict[int, float]:
    with open(root / "run" / "version_0" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_fit_lowers_loss_and_writes_adapter(tiny_llama_dir, tmp_path):
    build_cli(fit_args(tiny_llama_dir, tmp_path, 24))
    losses = train_losses(tmp_path)
    first, last = sum(list(losses.values())[:4]) / 4, sum(list(losses.values())[-4:]) / 4
    assert last < 0.8 * first, losses
    adapter = tmp_path / "run" / "version_0" / "adapter"
    assert (adapter / "adapter.json").is_file() and (adapter / "adapter.safetensors").is_file()
    checkpoint = next((tmp_path / "run" / "version_0" / "checkpoints").glob("*.ckpt"))
    state = torch.load(checkpoint, weights_only=True)
    assert state["ftzoo"]["method"] == "full" and set(state["state_dict"]) <= {
        "model." + name for name in load_file(adapter / "adapter.safetensors")
    }


class StopAfter(Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, *args):
        trainer.should_stop = trainer.global_step >= self.steps


def test_resume_continues_exactly(tiny_llama_dir, tmp_path):
    every_3 = ["--trainer.callbacks", "ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "3",
               "--trainer.callbacks.save_top_k", "-1"]  # fmt: skip
    build_cli(fit_args(tiny_llama_dir, tmp_path / "straight", 8, *every_3))
    straight = train_losses(tmp_path / "straight")

    interrupted = build_cli(fit_args(tiny_llama_dir, tmp_path / "first", 8, *every_3)[1:], run=False)
    interrupted.trainer.callbacks.append(StopAfter(3))  # as if the job were killed after step 3
    interrupted.trainer.fit(interrupted.model, datamodule=interrupted.datamodule)
    checkpoint = tmp_path / "first" / "run" / "version_0" / "checkpoints" / "epoch=0-step=3.ckpt"
    build_cli(fit_args(tiny_llama_dir, tmp_path / "resumed", 8, "--ckpt_path", str(checkpoint)))
    resumed = train_losses(tmp_path / "resumed")

    assert sorted(resumed) == [s for s in sorted(straight) if s >= 3]
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], rel=1e-5), (step, loss, straight[step])
    a = load_file(tmp_path / "straight" / "run" / "version_0" / "adapter" / "adapter.safetensors")
    b = load_file(tmp_path / "resumed" / "run" / "version_0" / "adapter" / "adapter.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_validate_with_adapter_reports_accuracy(tiny_llama_dir, tmp_path):
    build_cli(fit_args(tiny_llama_dir, tmp_path, 2))
    adapter = tmp_path / "run" / "version_0" / "adapter"
    cli = build_cli(
        ["validate", "--model.model", str(tiny_llama_dir), "--model.adapter", str(adapter),
         "--data", "datamodules.ArithmeticDataModule", "--data.num_train", "16", "--data.num_val", "4",
         "--data.max_new_tokens", "4", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    )
    metrics = cli.trainer.callback_metrics
    assert "val/acc" in metrics and "val/acc/arithmetic" in metrics and "val/loss" in metrics
    assert cli.model.method.config() == {"include": ".*", "exclude": None}  # rebuilt from the adapter


def test_print_config_runs_as_printed(tiny_llama_dir, tmp_path, capsys):
    args = fit_args(tiny_llama_dir, tmp_path, 2)
    with pytest.raises(SystemExit):
        build_cli([*args, "--print_config"])
    config = tmp_path / "printed.yaml"
    config.write_text(capsys.readouterr().out)
    assert "class_path: plugins.full.plugin.FullFineTuning" in config.read_text()
    build_cli(["fit", "--config", str(config)])
    assert (tmp_path / "run" / "version_0" / "adapter" / "adapter.json").is_file()


def test_registered_method_names_resolve_in_yaml_and_flags():
    from zoo.cli import load_config_with_method_names, resolve_method_names

    assert resolve_method_names(["fit", "--model.method", "full"])[2] == "plugins.full.plugin.FullFineTuning"
    assert resolve_method_names(["fit", "--model.method=full"])[1] == "--model.method=plugins.full.plugin.FullFineTuning"
    config = load_config_with_method_names("model:\n  method:\n    class_path: full\n    init_args: {include: norm}\n")
    assert config["model"]["method"] == {"class_path": "plugins.full.plugin.FullFineTuning", "init_args": {"include": "norm"}}
    assert load_config_with_method_names("model:\n  method: full\n")["model"]["method"].endswith("FullFineTuning")


def test_resume_rebuilds_the_stored_selection_without_selecting_again(tiny_llama_dir, tmp_path, monkeypatch):
    s2ft = ["--model.method", "s2ft", "--model.method.init_args.o_heads", "0.5",
            "--model.method.init_args.down_channels", "0.25"]  # fmt: skip
    build_cli(fit_args(tiny_llama_dir, tmp_path / "first", 2, *s2ft))
    checkpoint = next((tmp_path / "first" / "run" / "version_0" / "checkpoints").glob("*.ckpt"))
    stored = torch.load(checkpoint, weights_only=True)["ftzoo"]["selection"]

    from zoo.module import FineTuneModule

    def no_selection(self):
        raise AssertionError("a resumed run must not select again")

    monkeypatch.setattr(FineTuneModule, "_select", no_selection)
    other_seed = [*fit_args(tiny_llama_dir, tmp_path / "resumed", 4, *s2ft), "--seed_everything", "8"]
    cli = build_cli([*other_seed, "--ckpt_path", str(checkpoint)])
    assert cli.model.selection == stored and cli.trainer.global_step == 4


def test_predict_writes_jsonl(tiny_llama_dir, tmp_path):
    import json

    out = tmp_path / "predictions.jsonl"
    build_cli(
        ["predict", "--model.model", str(tiny_llama_dir), "--data", "datamodules.ArithmeticDataModule",
         "--data.num_train", "8", "--data.num_test", "3", "--data.max_new_tokens", "4", "--data.prompt_style", "chat",
         "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "zoo.callbacks.PredictionWriter",
         "--trainer.callbacks.output_file", str(out)]  # fmt: skip
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {"task", "prompt", "generation", "answer", "correct"} <= set(rows[0])


def test_predictions_batched_by_length_are_written_in_file_order(tiny_llama_dir, tmp_path):
    import json

    from datamodules import ArithmeticDataModule

    out = tmp_path / "predictions.jsonl"
    data = ["--data", "datamodules.ArithmeticDataModule", "--data.num_train", "8", "--data.num_test", "24",
            "--data.eval_batch_size", "4", "--data.group_by_length", "true", "--data.max_new_tokens", "2"]  # fmt: skip
    cli = build_cli(
        ["predict", "--model.model", str(tiny_llama_dir), *data, "--trainer.accelerator", "cpu",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
         str(tmp_path), "--trainer.callbacks", "zoo.callbacks.PredictionWriter", "--trainer.callbacks.output_file",
         str(out)]  # fmt: skip
    )
    prompts = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    module: ArithmeticDataModule = cli.datamodule
    assert list(module.predict_dataloader().sampler) != list(range(24)), "batched out of file order"
    assert prompts == [e.prompt for e in module._split("predict")]


def test_short_optimizer_names_mean_torch_optim():
    """bitsandbytes (imported by peft when installed) defines AdamW too; a short name is torch.optim's."""
    from zoo.cli import resolve_optimizer_names

    args = ["--model.optimizer", "AdamW", "--model.optimizer.class_path=SGD", "--model.optimizer.lr", "1e-3"]
    assert resolve_optimizer_names(args) == [
        "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.class_path=torch.optim.SGD",
        "--model.optimizer.lr", "1e-3",
    ]  # fmt: skip
    assert resolve_optimizer_names(["--model.optimizer", "bitsandbytes.optim.AdamW8bit"])[1] == "bitsandbytes.optim.AdamW8bit"
