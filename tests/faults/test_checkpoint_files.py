"""Fault 3: a checkpoint write cut short (full disk, kill), and resuming from a damaged file.

| case                                        | what the user sees                               | kept on disk                     |
| ------------------------------------------- | ------------------------------------------------ | -------------------------------- |
| the disk fills while ``last.ckpt`` is       | the OSError of the write (EFBIG here)            | the previous ``last.ckpt``,      |
| rewritten                                   |                                                  | whole; no temporary file         |
| ``fit`` saves checkpoints                   | nothing: they go through ``AtomicCheckpointIO``  |                                  |
| ``--ckpt_path`` names a truncated file      | CheckpointError: "<path> is damaged (N bytes;    | the file, untouched              |
|                                             | ...)", and the other checkpoints beside it       |                                  |
| ``--ckpt_path`` names no file               | CheckpointError: "<path>: no such checkpoint"    |                                  |
| the disk fills during fit: the periodic     | "Could not write <interrupted.ckpt> either: ...  | ``last.ckpt`` of step 2, whole;  |
| checkpoint of step 3 fails, and the         | No space left on device", "Last complete         | no temporary file                |
| interrupt checkpoint too                    | checkpoint, at step 2: <last.ckpt>" and the      |                                  |
|                                             | resume command; ``lightning`` ends with one      |                                  |
|                                             | ``error:`` line (no traceback)                   |                                  |
"""

from __future__ import annotations

import contextlib
import errno
import resource
import shlex
import signal
import sys
from collections.abc import Iterator

import pytest
import torch
from faults.harness import quickstart_args, run_dir

from zoo import cli as zoo_cli
from zoo.checkpoints import AtomicCheckpointIO, CheckpointError
from zoo.cli import build_cli


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, tmp_path_factory):
    """A two-step quickstart run with a checkpoint at each step."""
    root = tmp_path_factory.mktemp("run")
    every_step = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1",
                  "--trainer.callbacks.save_top_k", "-1"]  # fmt: skip
    cli = build_cli(quickstart_args(tiny_llama_dir, root, 2, *every_step))
    return cli, run_dir(root) / "checkpoints"


def test_fit_writes_checkpoints_atomically(finished_run):
    cli, folder = finished_run
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]


@contextlib.contextmanager
def disk_full_after(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of a file fail with EFBIG, as on a full disk (RLIMIT_FSIZE)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_write_cut_short_by_a_full_disk_keeps_the_previous_checkpoint(finished_run, tmp_path):
    cli, _ = finished_run
    io = cli.trainer.strategy.checkpoint_io  # what fit saved through
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4)}}, path)
    before = path.read_bytes()
    with disk_full_after(1 << 20), pytest.raises((OSError, RuntimeError)):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(1 << 20)}}, path)  # 4 MiB
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resuming_from_a_truncated_checkpoint_names_the_file(finished_run, tiny_llama_dir, tmp_path):
    _, folder = finished_run
    damaged = tmp_path / "last.ckpt"
    data = (folder / "last.ckpt").read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{damaged} is damaged \({len(data) // 2:,} bytes"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 3, "--ckpt_path", str(damaged)))
    with pytest.raises(CheckpointError, match="is damaged"):
        AtomicCheckpointIO().load_checkpoint(damaged)  # validate/test --ckpt_path read through it too
    assert damaged.read_bytes() == data[: len(data) // 2]


def test_resuming_from_a_missing_checkpoint_names_the_file(tiny_llama_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 3, "--ckpt_path", str(tmp_path / "nope.ckpt")))


def test_a_full_disk_during_fit_names_the_last_complete_checkpoint_and_the_resume_command(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    save = AtomicCheckpointIO.save_checkpoint

    def full_from_step_3(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_from_step_3)
    every_step = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1",
                  "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.save_last", "true"]  # fmt: skip
    args = quickstart_args(tiny_llama_dir, tmp_path, 6, *every_step)
    monkeypatch.setattr(sys, "argv", ["lightning", *args])
    with pytest.raises(SystemExit) as exit_:
        zoo_cli.main()
    assert exit_.value.code == f"error: [Errno {errno.ENOSPC}] No space left on device: " + repr(
        str(run_dir(tmp_path) / "checkpoints" / "epoch=0-step=3.ckpt")
    )  # one line, no traceback
    printed = capsys.readouterr().err
    folder = run_dir(tmp_path) / "checkpoints"
    assert f"Could not write {folder / 'interrupted.ckpt'} either: [Errno {errno.ENOSPC}]" in printed, printed
    assert f"Last complete checkpoint, at step 2: {folder / 'last.ckpt'}" in printed
    command = shlex.split(printed.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[0] == "lightning" and command[-2:] == ["--ckpt_path", str(folder / "last.ckpt")]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]
