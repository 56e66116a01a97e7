"""Fault 2: Ctrl-C (SIGINT) in the middle of ``lightning fit``.

| case                         | what the user sees                                         | kept on disk                       |
| ---------------------------- | ---------------------------------------------------------- | ---------------------------------- |
| SIGINT during step 4 of 6    | the step finishes; "Checkpoint at step 4: <path>" and the  | ``checkpoints/interrupted.ckpt``   |
|                              | exact ``lightning fit ... --ckpt_path <path>`` command     | (no half-written adapter)          |
| the printed command is run   | training continues from step 4                             | the same adapter as an             |
|                              |                                                            | uninterrupted run                  |
| shipped recipes              | checkpoint every N steps (``last.ckpt``) and on interrupt  |                                    |
"""

from __future__ import annotations

import shlex

import pytest
import torch
from faults.harness import SigintAt, quickstart_args, run_dir, sigint_restored
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from locations import REPO
from zoo.checkpoints import InterruptCheckpoint
from zoo.cli import build_cli

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


def test_sigint_keeps_a_checkpoint_and_the_printed_command_resumes_to_the_same_adapter(
    tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    build_cli(quickstart_args(tiny_llama_dir, tmp_path / "straight", 6))
    straight = load_file(run_dir(tmp_path / "straight") / "adapter" / "adapter.safetensors")

    interrupted = quickstart_args(tiny_llama_dir, tmp_path / "cut", 6, "--trainer.callbacks+=faults.harness.SigintAt",
                                  "--trainer.callbacks.step", "4")  # fmt: skip
    capsys.readouterr()
    with sigint_restored(), pytest.raises(SystemExit):
        build_cli(interrupted)
    printed = capsys.readouterr().err
    checkpoint = run_dir(tmp_path / "cut") / "checkpoints" / "interrupted.ckpt"
    assert f"Checkpoint at step 4: {checkpoint}" in printed, printed
    assert not (run_dir(tmp_path / "cut") / "adapter").exists()
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4

    command = shlex.split(printed.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[0] == "lightning" and command[-2:] == ["--ckpt_path", str(checkpoint)]
    cli = build_cli(command[1:])
    assert cli.trainer.global_step == 6
    resumed = load_file(run_dir(tmp_path / "cut") / "adapter" / "adapter.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recipe", ["configs/quickstart.yaml", "configs/smollm2/math.yaml",
                                    "configs/smollm2/commonsense.yaml"])  # fmt: skip
def test_recipes_checkpoint_every_n_steps_and_on_interrupt(recipe):
    import yaml

    callbacks = yaml.safe_load((REPO / recipe).read_text())["trainer"]["callbacks"]
    by_class = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in callbacks}
    assert by_class[ModelCheckpoint.__name__]["every_n_train_steps"] > 0
    assert by_class[ModelCheckpoint.__name__]["save_last"] is True
    assert InterruptCheckpoint.__name__ in by_class
