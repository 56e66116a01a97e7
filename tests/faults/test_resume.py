"""Fault 13: a run is resumed with other settings than it was trained with.

| case                                          | what the user sees                                      | what trains                      |
| --------------------------------------------- | ------------------------------------------------------- | -------------------------------- |
| the printed resume command with a lower       | "Resuming with this run's optimizer settings, not the   | steps 3-6 at the new rate (the   |
| ``--model.optimizer.init_args.lr`` (what the  | checkpoint's: lr 0.002 -> 0.0001 (the optimizer's       | schedule's position and the      |
| NaN message advises)                          | moments, the step count and the schedule's position are | moments are the checkpoint's)    |
|                                               | the checkpoint's)"                                      |                                  |
| the same without a change                     | nothing about settings                                  | the checkpoint's rate            |
"""

from __future__ import annotations

import shlex

import pytest
from faults.harness import RecordLr, quickstart_args, run_dir, sigint_restored

from zoo.cli import build_cli
from zoo.schedule import warmup_decay

pytestmark = pytest.mark.slow  # trains through Lightning


def test_resuming_with_a_lower_learning_rate_applies_it_and_says_so(tiny_llama_dir, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(RecordLr, "seen", {})
    args = quickstart_args(tiny_llama_dir, tmp_path, 6, "--model.warmup_steps", "4",
                           "--trainer.callbacks+=faults.harness.RecordLr",
                           "--trainer.callbacks+=faults.harness.SigintAt", "--trainer.callbacks.step", "2")  # fmt: skip
    with sigint_restored(), pytest.raises(SystemExit):
        build_cli(args)
    printed = capsys.readouterr().err
    command = shlex.split(printed.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[-1] == str(run_dir(tmp_path) / "checkpoints" / "interrupted.ckpt")

    cli = build_cli([*command[1:], "--model.optimizer.init_args.lr", "1.0e-4"])
    assert cli.trainer.global_step == 6
    assert ("Resuming with this run's optimizer settings, not the checkpoint's: lr 0.002 -> 0.0001 (the optimizer's "
            "moments, the step count and the schedule's position are the checkpoint's)") in caplog.text  # fmt: skip
    schedule = warmup_decay(4, 6, "cosine")  # the recipe's decay; the multiplier of step k is schedule(k - 1)
    assert RecordLr.seen[2] == pytest.approx(2e-3 * schedule(1))
    for step in (3, 4, 5, 6):
        assert RecordLr.seen[step] == pytest.approx(1e-4 * schedule(step - 1)), step


def test_resuming_with_the_same_settings_says_nothing_about_them(tiny_llama_dir, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(RecordLr, "seen", {})
    args = quickstart_args(tiny_llama_dir, tmp_path, 4, "--trainer.callbacks+=faults.harness.RecordLr",
                           "--trainer.callbacks+=faults.harness.SigintAt", "--trainer.callbacks.step", "2")  # fmt: skip
    with sigint_restored(), pytest.raises(SystemExit):
        build_cli(args)
    command = shlex.split(capsys.readouterr().err.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    build_cli(command[1:])
    assert "optimizer settings" not in caplog.text
    schedule = warmup_decay(2, 4, "cosine")
    assert [RecordLr.seen[s] for s in (1, 2, 3, 4)] == pytest.approx([2e-3 * schedule(k) for k in range(4)])
