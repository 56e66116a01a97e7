"""Fault 11: a run's folders hold something of the user's or of an earlier run.

| case                                          | what the user sees                                      | kept on disk                    |
| --------------------------------------------- | ------------------------------------------------------- | ------------------------------- |
| ``fit --config config.yaml --trainer.logger   | "<dir>/config.yaml is not a config an earlier run saved | ``config.yaml`` byte for byte;  |
| false`` in the folder of ``config.yaml`` (the | (it is an input of this run); this run's config is      | the full config in              |
| log folder is then the working directory)     | saved as <dir>/run-config.yaml"                         | ``run-config.yaml``             |
| ``fit`` again in a run folder that holds      | OutputPathError before the model loads: "<dir> holds    | the earlier run's checkpoints   |
| ``last.ckpt``, without ``--ckpt_path``        | checkpoints of an earlier run (last.ckpt). To resume    | and metrics, untouched          |
| (Lightning would resume from it unasked)      | it, ask for it: lightning fit ... --ckpt_path <last>"   |                                 |
|                                               | and how to start a new run instead                      |                                 |
| the printed command is run                    | training resumes from that checkpoint                   | the adapter                     |
| a second ``fit`` to the same new              | it exits 1 before its model loads: "error: <dir> is     | the first run's adapter; no     |
| ``--model.adapter_dir`` while the first one   | claimed by another run (process N on host) since ...:   | claim file left                 |
| trains                                        | lightning fit, logging to <run>. Two runs must not      |                                 |
|                                               | write one adapter folder: give this one another         |                                 |
|                                               | --model.adapter_dir (if that run is gone, remove ...)"  |                                 |
| a claim left by a killed run                  | nothing: it is stale (its process is gone), taken over  | the new claim, then the adapter |
| an adapter appears in ``adapter_dir`` while   | at the end of fit: "Training stopped by an error: <dir> | the other adapter, untouched;   |
| the run trains (a tool wrote it)              | already exists; pass --model.overwrite true ...",       | ``interrupted.ckpt`` of the     |
|                                               | the checkpoint and the resume command                   | last step                       |
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from faults.harness import FitAnotherAt, quickstart_args, run_dir
from lightning.pytorch import Callback
from locations import REPO

from zoo import module as zoo_module
from zoo.adapter import load_adapter, save_adapter
from zoo.cli import build_cli
from zoo.outputs import OutputPathError, claim_folder

pytestmark = pytest.mark.slow  # trains through Lightning


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its modification time and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_an_input_config_is_never_written_over_by_the_saved_config(tiny_llama_dir, tmp_path, monkeypatch, caplog):
    recipe = (REPO / "configs" / "quickstart.yaml").read_text()
    mine = "# my own notes: keep them\n" + recipe.replace("max_steps: 250", "max_steps: 2  # short, for a try")
    (tmp_path / "config.yaml").write_text(mine)
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", "config.yaml", "--model.model", str(tiny_llama_dir),
                     "--data.init_args.num_train", "24", "--data.init_args.max_length", "256",
                     "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert (tmp_path / "config.yaml").read_text() == mine
    saved = tmp_path / "run-config.yaml"
    assert saved.read_text().startswith("# lightning.pytorch==")
    assert yaml.safe_load(saved.read_text())["trainer"]["max_steps"] == 2
    assert f"{tmp_path}/config.yaml is not a config an earlier run saved (it is an input of this run); this run's " \
           f"config is saved as {saved}" in caplog.text  # fmt: skip
    assert (tmp_path / "adapter" / "adapter.json").is_file()


def test_fit_in_a_run_folder_with_checkpoints_resumes_only_when_asked(tiny_llama_dir, tmp_path, monkeypatch):
    args = quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.adapter_dir", str(tmp_path / "first"))
    build_cli(args)
    folder = run_dir(tmp_path) / "checkpoints"
    last = folder / "last.ckpt"
    before = snapshot(run_dir(tmp_path))

    again = quickstart_args(tiny_llama_dir, tmp_path, 4, "--model.adapter_dir", str(tmp_path / "second"))
    with monkeypatch.context() as patched:
        patched.setattr(zoo_module, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
        with pytest.raises(OutputPathError, match=rf"{folder} holds checkpoints of an earlier run \(last.ckpt\)\. "
                                                  r"To resume it, ask for it:\n  lightning fit .*\nTo start a new run, "
                                                  r"give it another folder") as refused:  # fmt: skip
            build_cli(again)
    assert snapshot(run_dir(tmp_path)) == before and "checkpoints/last.ckpt" in before
    assert not (tmp_path / "second").exists()

    command = shlex.split(str(refused.value).splitlines()[1])
    assert command[0] == "lightning" and command[-2:] == ["--ckpt_path", str(last)]
    cli = build_cli(command[1:])
    assert cli.trainer.global_step == 4 and (tmp_path / "second" / "adapter.json").is_file()


def test_a_second_fit_to_the_same_adapter_dir_is_refused_before_it_trains(tiny_llama_dir, tmp_path, monkeypatch):
    adapter_dir = tmp_path / "shared" / "adapter"
    second = quickstart_args(tiny_llama_dir, tmp_path / "second", 2, "--model.adapter_dir", str(adapter_dir))
    monkeypatch.setattr(FitAnotherAt, "args", second)
    monkeypatch.setattr(FitAnotherAt, "result", {})
    first = quickstart_args(tiny_llama_dir, tmp_path / "first", 3, "--model.adapter_dir", str(adapter_dir),
                            "--trainer.callbacks+=faults.harness.FitAnotherAt", "--trainer.callbacks.step", "1")  # fmt: skip
    build_cli(first)

    assert FitAnotherAt.result["returncode"] == 1
    refusal = FitAnotherAt.result["stderr"].strip().splitlines()[-1]
    assert refusal.startswith(f"error: {adapter_dir} is claimed by another run (process ")
    assert f"lightning fit, logging to {run_dir(tmp_path / 'first')}. Two runs must not write one adapter folder" in refusal
    assert "S2FT" not in FitAnotherAt.result["stderr"]  # refused before its model loaded and selected
    assert load_adapter(adapter_dir).info["global_step"] == 3  # the first run's
    assert sorted(p.name for p in adapter_dir.parent.iterdir()) == ["adapter"]  # its claim released


def test_a_claim_left_by_a_killed_run_is_taken_over(tiny_llama_dir, tmp_path):
    adapter_dir = tmp_path / "adapter"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    claim = claim_folder(adapter_dir, owner="a run killed with -9")
    claim.write_text(claim.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {gone.stdout.strip()}'))
    build_cli(quickstart_args(tiny_llama_dir, tmp_path, 1, "--model.adapter_dir", str(adapter_dir)))
    assert (adapter_dir / "adapter.json").is_file() and not claim.exists()


def test_an_adapter_that_appears_while_the_run_trains_is_not_replaced(tiny, tiny_llama_dir, tmp_path, capsys):
    adapter_dir = tmp_path / "adapter"
    other = save_adapter(tiny.adapter("full"), tmp_path / "other")

    class WriteAt(Callback):  # as tools.merge --output <adapter_dir> would, ignoring the claim
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 1:
                shutil.copytree(other, adapter_dir)

    cli = build_cli(quickstart_args(tiny_llama_dir, tmp_path, 2, "--model.adapter_dir", str(adapter_dir))[1:], run=False)
    cli.trainer.callbacks.append(WriteAt())
    with pytest.raises(OutputPathError, match="already exists; pass --model.overwrite true"):
        cli.trainer.fit(cli.model, cli.datamodule)
    printed = capsys.readouterr().err
    checkpoint = run_dir(tmp_path) / "checkpoints" / "interrupted.ckpt"
    assert f"Checkpoint at step 2: {checkpoint}" in printed and "Resume with:" in printed
    assert load_adapter(adapter_dir).method == "full"
