"""Fault 4: NaN or infinite values, in an adapter or in the training loss.

| case                                   | what the user sees                                    | kept on disk                       |
| -------------------------------------- | ----------------------------------------------------- | ---------------------------------- |
| ``save_adapter`` of a NaN adapter      | NonFiniteError naming the tensor and the NaN count,   | nothing written                    |
|                                        | and ``allow_nonfinite`` to override                   |                                    |
| ``tools/export.py`` of a NaN adapter   | NonFiniteError before the base loads                  | no model folder                    |
| ``tools/merge.py`` with a NaN adapter  | NonFiniteError naming the adapter                     | no merged adapter                  |
| ``allow_nonfinite`` given              | it is written as asked                                | the NaN adapter / model            |
| the loss becomes NaN at step 3 of fit  | NonFiniteLossError "the training loss became nan at   | ``interrupted.ckpt`` with the      |
|                                        | step 3; ... stopped before that update", and the      | finite weights of step 2; no       |
|                                        | resume command                                        | adapter                            |
"""

from __future__ import annotations

import pytest
import torch
from faults.harness import quickstart_args, run_dir

from tools.export import export
from tools.merge import merge
from zoo.adapter import NonFiniteError, load_adapter, save_adapter
from zoo.cli import build_cli
from zoo.guard import NonFiniteLossError
from zoo.module import FineTuneModule


@pytest.fixture
def nan_adapter(tiny, tmp_path):
    """A full-fine-tuning adapter with NaNs in one tensor, saved with the override."""
    adapter = tiny.adapter("full")
    name = next(iter(adapter.tensors))
    adapter.tensors[name] = adapter.tensors[name].clone()
    adapter.tensors[name].view(-1)[:3] = float("nan")
    folder = save_adapter(adapter, tmp_path / "nan-adapter", allow_nonfinite=True)
    return folder, name


def test_saving_a_nan_adapter_is_refused_unless_allowed(tiny, tmp_path):
    adapter = tiny.adapter("s2ft")
    name = next(iter(adapter.tensors))
    adapter.tensors[name][0] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"{name} \(0 NaN, \d+ inf .*allow_nonfinite"):
        save_adapter(adapter, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []
    save_adapter(adapter, tmp_path / "adapter", allow_nonfinite=True)
    assert torch.isinf(load_adapter(tmp_path / "adapter").tensors[name]).any()


def test_export_refuses_a_nan_adapter_unless_allowed(nan_adapter, tmp_path):
    folder, name = nan_adapter
    with pytest.raises(NonFiniteError, match=rf"adapter {folder} holds non-finite values .*{name} \(3 NaN"):
        export(adapter=str(folder), output=str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    export(adapter=str(folder), output=str(tmp_path / "model"), allow_nonfinite=True)
    assert (tmp_path / "model" / "config.json").is_file()


def test_merge_refuses_a_nan_adapter(nan_adapter, tiny, tmp_path):
    folder, _ = nan_adapter
    good = tiny.saved("full", tmp_path / "good", seed=1)
    with pytest.raises(NonFiniteError, match="adapter nan holds non-finite values"):
        merge(adapters=[f"nan={folder}", f"good={good}"], output=str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_a_nan_loss_stops_fit_before_the_update_and_keeps_the_last_good_weights(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    loss = FineTuneModule._loss

    def nan_at_step_3(self, batch):
        value = loss(self, batch)
        return value * float("nan") if self.trainer.training and self.trainer.global_step == 2 else value

    monkeypatch.setattr(FineTuneModule, "_loss", nan_at_step_3)
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at step 3; training stopped before"):
        build_cli(quickstart_args(tiny_llama_dir, tmp_path, 6))
    checkpoint = run_dir(tmp_path) / "checkpoints" / "interrupted.ckpt"
    assert f"Checkpoint at step 2: {checkpoint}" in capsys.readouterr().err
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 2 and state["state_dict"]
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())
    assert not (run_dir(tmp_path) / "adapter").exists()
