"""Fault 4: NaN or infinite values, in an adapter or in the training loss.

| case                                   | what the user sees                                    | kept on disk                       |
| -------------------------------------- | ----------------------------------------------------- | ---------------------------------- |
| ``save_adapter`` of a NaN adapter      | NonFiniteError naming the tensor and the NaN count,   | nothing written                    |
|                                        | and ``allow_nonfinite`` to override                   |                                    |
| a NaN adapter given to any loader:     | NonFiniteError "adapter <folder> holds non-finite     | nothing written (no model folder,  |
| ``tools.export``, ``tools.merge``,     | values in 1 tensor(s): <tensor> (3 NaN, 0 inf of N);  | merged adapter, results or         |
| ``lightning test``, ``tools.switch``,  | ... allow_nonfinite=True (--allow_nonfinite true) to  | answers)                           |
| ``tools.serve`` (a requests file or    | use it anyway", before the base model loads           |                                    |
| HTTP), ``tools.evaluate``              | (``lightning`` and the tools print it as one          |                                    |
|                                        | ``error:`` line); was: served, switched and tested as |                                    |
|                                        | token 0s                                              |                                    |
| a running server asked for a NaN       | HTTP 400 with the same message (``POST                | the server serves the others       |
| adapter (``/v1/load_lora_adapter``, or | /v1/load_lora_adapter``; a request's error)           |                                    |
| a request naming one in                |                                                       |                                    |
| ``--adapter_folder``)                  |                                                       |                                    |
| ``allow_nonfinite`` given (export,     | it is written as asked                                | the NaN adapter / model            |
| ``save_adapter``)                      |                                                       |                                    |
| the loss becomes NaN at step 3 of fit  | NonFiniteLossError "the training loss became nan at   | ``interrupted.ckpt`` with the      |
|                                        | step 3; ... stopped before that update", and the      | finite weights of step 2; no       |
|                                        | resume command                                        | adapter                            |
"""

from __future__ import annotations

import asyncio
import queue
import re

import pytest
import torch
from faults.harness import quickstart_args, run_dir

from datamodules import ArithmeticDataModule
from tools import evaluate as evaluate_tool
from tools import serve as serve_tool
from tools import switch as switch_tool
from tools.evaluate import evaluate
from tools.export import export
from tools.merge import merge
from tools.serve import serve
from tools.switch import switch
from zoo import module as zoo_module
from zoo.adapter import NonFiniteError, load_adapter, save_adapter
from zoo.cli import build_cli
from zoo.guard import NonFiniteLossError
from zoo.module import FineTuneModule
from zoo.server import app as server_app
from zoo.server import engine as server_engine
from zoo.server.config import ServerConfig
from zoo.server.protocol import ApiError, CompletionRequest
from zoo.server.routes import LoadAdapter


@pytest.fixture
def nan_adapter(tiny, tmp_path):
    """A full-fine-tuning adapter with NaNs in one tensor, saved with the override."""
    adapter = tiny.adapter("full")
    name = next(iter(adapter.tensors))
    adapter.tensors[name] = adapter.tensors[name].clone()
    adapter.tensors[name].view(-1)[:3] = float("nan")
    folder = save_adapter(adapter, tmp_path / "nan-adapter", allow_nonfinite=True)
    return folder, name


def nan_message(folder, name: str) -> str:
    """What every loader says of the ``nan_adapter`` fixture's adapter: the folder and the tensor."""
    return rf"adapter {folder} holds non-finite values in 1 tensor\(s\): {name} \(3 NaN, 0 inf of \d+\)"


def test_saving_a_nan_adapter_is_refused_unless_allowed(tiny, tmp_path):
    adapter = tiny.adapter("s2ft")
    name = next(iter(adapter.tensors))
    adapter.tensors[name][0] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"{name} \(0 NaN, \d+ inf .*allow_nonfinite"):
        save_adapter(adapter, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []
    save_adapter(adapter, tmp_path / "adapter", allow_nonfinite=True)
    assert torch.isinf(load_adapter(tmp_path / "adapter", allow_nonfinite=True).tensors[name]).any()


def test_export_refuses_a_nan_adapter_unless_allowed(nan_adapter, tmp_path):
    folder, name = nan_adapter
    with pytest.raises(NonFiniteError, match=nan_message(folder, name)):
        export(adapter=str(folder), output=str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    export(adapter=str(folder), output=str(tmp_path / "model"), allow_nonfinite=True)
    assert (tmp_path / "model" / "config.json").is_file()


def test_merge_refuses_a_nan_adapter(nan_adapter, tiny, tmp_path):
    folder, name = nan_adapter
    good = tiny.saved("full", tmp_path / "good", seed=1)
    with pytest.raises(NonFiniteError, match=nan_message(folder, name)):
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


def no_base_load(monkeypatch) -> None:
    """Fail if a base model is loaded: the refusal must come first."""
    refuse = lambda *a, **k: pytest.fail("the base model was loaded before the adapter was checked")
    for module in (zoo_module, switch_tool, serve_tool, evaluate_tool):
        monkeypatch.setattr(module, "load_base" if module is not zoo_module else "load_model", refuse, raising=True)


def test_every_loader_refuses_a_nan_adapter_naming_the_tensor(nan_adapter, tiny_llama_dir, tmp_path, monkeypatch):
    folder, name = nan_adapter
    message = nan_message(folder, name)
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"prompt": "2+2=", "adapter": "nan"}\n')
    with pytest.raises(NonFiniteError, match=message):
        build_cli(["test", "--model.model", str(tiny_llama_dir), "--model.adapter", str(folder),
                   "--data", "datamodules.ArithmeticDataModule", "--data.num_train", "8", "--data.num_test", "4",
                   "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", str(tmp_path / "test-run")])  # fmt: skip
    no_base_load(monkeypatch)
    with pytest.raises(NonFiniteError, match=message):
        switch([str(folder)], output=str(tmp_path / "switch.json"))
    with pytest.raises(NonFiniteError, match=message):
        serve([f"nan={folder}"], requests=str(requests), output=str(tmp_path / "answers.jsonl"))
    with pytest.raises(NonFiniteError, match=message):
        evaluate(ArithmeticDataModule(num_train=0, num_val=0, num_test=2), adapters=[f"nan={folder}"],
                 output=str(tmp_path / "eval"))  # fmt: skip
    # HTTP: the decoding loop reads the adapters, before the base model and before the server listens.
    monkeypatch.setattr(server_engine, "load_base", lambda *a, **k: pytest.fail("the base model was loaded"))
    monkeypatch.setattr(server_app._Server, "run", lambda *a, **k: pytest.fail("the server listened"))
    with pytest.raises(NonFiniteError, match=message):
        serve([f"nan={folder}"], port=8765)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan-adapter", "requests.jsonl", "test-run"]
    assert [p.name for p in (tmp_path / "test-run").iterdir()] == ["config.yaml"]  # no results
    assert load_adapter(folder, allow_nonfinite=True).tensors[name].isnan().sum() == 3  # when asked


def test_a_running_server_refuses_a_nan_adapter_it_is_asked_for(nan_adapter, tiny_llama_dir):
    folder, name = nan_adapter
    config = ServerConfig(base_model=str(tiny_llama_dir), adapter_folder=str(folder.parent), threads=1)
    engine, frontend = server_app.load(config)
    engine.start()
    try:
        with pytest.raises(ApiError, match=nan_message(folder, name)) as refused:  # POST /v1/load_lora_adapter
            asyncio.run(frontend.load_adapter(LoadAdapter(lora_name="nan", lora_path=str(folder))))
        assert refused.value.status == 400 and "nan" not in frontend.adapters.names
        job = frontend.prompts.completions(CompletionRequest(model=folder.name, prompt="2+2=", max_tokens=2))[0]
        answers: queue.Queue = queue.Queue()
        engine.submit("from-the-adapter-folder", job, answers.put)  # what a request naming it does
        answer = answers.get(timeout=60)
        assert answer["status"] == 400 and re.search(nan_message(folder, name), answer["error"]), answer
        engine.submit("base", frontend.prompts.completions(CompletionRequest(model="base", prompt="2+2=",
                                                                              max_tokens=2))[0], answers.put)  # fmt: skip
        while "error" not in (answer := answers.get(timeout=60)) and not answer.get("finish_reason"):
            pass
        assert "error" not in answer, answer  # the base model still answers
    finally:
        engine.stop()
