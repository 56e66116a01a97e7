"""Fault 10: signals during ``lightning fit`` beyond one Ctrl-C (fault 2): SIGTERM, a second Ctrl-C.

| case                                | what the user sees                                         | kept on disk                     |
| ----------------------------------- | ---------------------------------------------------------- | -------------------------------- |
| SIGTERM during step 4 of 6 (a       | the step finishes; "Training stopped by SIGTERM (a         | ``checkpoints/interrupted.ckpt`` |
| scheduler's stop, ``kill``)         | scheduler or `kill` asked it to stop)", "Checkpoint at     | at step 4; no adapter            |
|                                     | step 4: <path>" and the resume command; exit status 143    |                                  |
| Ctrl-C twice in step 27 (the first  | one line: "Stopped at once (second Ctrl-C) in step 27: no  | ``last.ckpt`` of step 25, as it  |
| asks to finish the step)            | checkpoint of that step was written; the last complete     | was; no ``interrupted.ckpt``     |
|                                     | checkpoint is <last.ckpt> (step 25); resume with           |                                  |
|                                     | --ckpt_path <last.ckpt>"; no traceback                     |                                  |
| Ctrl-C (again) while the interrupt  | the checkpoint is finished (after SIGTERM or an error:     | ``interrupted.ckpt`` of step 4,  |
| checkpoint is written, after Ctrl-C | "Ctrl-C: the checkpoint is being written; it will be       | whole (was: the write cut by a   |
| or SIGTERM                          | complete in a moment"), then "Checkpoint at step 4:        | KeyboardInterrupt traceback)     |
|                                     | <path>" and the resume command; exit status 1 / 143        |                                  |
| Ctrl-C while the run is set up      | one line: "Stopped (Ctrl-C) while the run was set up:      | nothing                          |
| (``lightning`` console script)      | nothing was written"; exit status 130                      |                                  |
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from collections.abc import Iterator

import pytest
import torch
from faults.harness import quickstart_args, run_dir, sigint_restored

from zoo import cli as zoo_cli
from zoo.cli import build_cli

pytestmark = pytest.mark.slow  # trains through Lightning


@contextlib.contextmanager
def sigterm_survived() -> Iterator[None]:
    """A SIGTERM that Lightning failed to catch must fail the test, not kill pytest."""
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def test_sigterm_finishes_the_step_keeps_a_checkpoint_and_exits_143(tiny_llama_dir, tmp_path, capsys):
    args = quickstart_args(tiny_llama_dir, tmp_path, 6, "--trainer.callbacks+=faults.harness.SigtermAt",
                           "--trainer.callbacks.step", "4")  # fmt: skip
    with sigterm_survived(), pytest.raises(SystemExit) as exit_:
        build_cli(args)
    assert exit_.value.code == 143
    printed = capsys.readouterr().err
    checkpoint = run_dir(tmp_path) / "checkpoints" / "interrupted.ckpt"
    assert "Training stopped by SIGTERM (a scheduler or `kill` asked it to stop)" in printed, printed
    assert f"Checkpoint at step 4: {checkpoint}" in printed
    command = shlex.split(printed.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[-2:] == ["--ckpt_path", str(checkpoint)]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4
    assert not (run_dir(tmp_path) / "adapter").exists()


def test_a_second_ctrl_c_stops_at_once_in_one_line_and_names_the_last_complete_checkpoint(
    tiny_llama_dir, tmp_path, capsys
):
    args = quickstart_args(tiny_llama_dir, tmp_path, 30, "--trainer.callbacks+=faults.harness.SigintTwiceAt",
                           "--trainer.callbacks.step", "27")  # fmt: skip
    with sigint_restored(), pytest.raises(SystemExit):
        build_cli(args)
    printed = capsys.readouterr().err
    folder = run_dir(tmp_path) / "checkpoints"
    last = folder / "last.ckpt"
    assert (
        f"\nStopped at once (second Ctrl-C) in step 27: no checkpoint of that step was written; the last complete "
        f"checkpoint is {last} (step 25); resume with --ckpt_path {last}\n"
    ) in printed, printed
    assert "Traceback" not in printed and "Checkpoint at step" not in printed
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=8-step=25.ckpt", "last.ckpt"]  # no interrupted.ckpt
    assert torch.load(last, weights_only=True)["global_step"] == 25


@pytest.mark.parametrize(
    ("callback", "status", "notice"),
    [("SigintWhileSavingAt", 1, ""),  # Lightning ignores Ctrl-C once it stops on one
     ("SigtermThenSigintWhileSavingAt", 143, "\nCtrl-C: the checkpoint is being written; it will be complete in a moment\n")],
    ids=["after-ctrl-c", "after-sigterm"],
)  # fmt: skip
def test_ctrl_c_while_the_checkpoint_is_written_lets_it_finish(
    callback, status, notice, tiny_llama_dir, tmp_path, capsys
):
    args = quickstart_args(tiny_llama_dir, tmp_path, 6, f"--trainer.callbacks+=faults.harness.{callback}",
                           "--trainer.callbacks.step", "4")  # fmt: skip
    with sigint_restored(), sigterm_survived(), pytest.raises(SystemExit) as exit_:
        build_cli(args)
    assert exit_.value.code == status
    printed = capsys.readouterr().err
    assert notice in printed, printed
    checkpoint = run_dir(tmp_path) / "checkpoints" / "interrupted.ckpt"
    assert f"Checkpoint at step 4: {checkpoint}\nResume with:" in printed, printed
    assert "Traceback" not in printed and "Stopped at once" not in printed
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4  # whole


def test_ctrl_c_while_the_run_is_set_up_prints_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. while the tokenizer loads, before Lightning handles Ctrl-C

    monkeypatch.setattr(zoo_cli, "build_cli", interrupted)
    monkeypatch.setattr(sys, "argv", ["lightning", "fit"])
    with pytest.raises(SystemExit) as exit_:
        zoo_cli.main()
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "\nStopped (Ctrl-C) while the run was set up: nothing was written\n"
