"""Data parallelism changes the speed, not the result: after the same 4 optimizer steps,

* DDP on 2 CPU ranks (gloo) × b records,
* FSDP on 2 CPU ranks × b records (auto-wrapped decoder layers, activation checkpointing),
* 1 process × b records with 2 accumulated micro-batches,

all give the adapter that 1 process × 2b records gives, within float tolerance.

Why they can agree: the sampler hands rank r the records ``order[r::2]`` of one seeded global
order (``datamodules/sampler.py``), so optimizer step k sees ``order[2bk : 2b(k+1)]`` in every
layout. The Hugging Face loss is the mean over a micro-batch's supervised tokens; DDP and FSDP
average gradients over ranks and Lightning divides the loss by ``accumulate_grad_batches``, so
all layouts compute the same mean only if every micro-batch has the same number of supervised
tokens: the data are records of one length (``equal_length_data``; see docs/distributed.md,
"Loss normalisation"). Nothing is random after the selection (no dropout), and the selection
is made on rank 0 and broadcast.

Rows: one per method in ``METHOD_ARGS`` that is registered in ``ftzoo.methods``; the others
are skipped with the reason shown (``pytest -rs``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from dist_runs import METHOD_ARGS, adapter_meta, adapter_tensors, fit_args, fit_here, largest_update, launch, registered
from transformers import AutoTokenizer

from datamodules import InstructionDataModule
from zoo.loading import load_model
from zoo.plugins import method_from_config, method_hooks

pytestmark = pytest.mark.distributed  # starts several processes

B = 4  # records per micro-batch and rank
TOLERANCE = {"rtol": 1e-4, "atol": 2e-5}

LAYER = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
CPU_FSDP = {
    "class_path": "cpu_fsdp.CPUFSDPStrategy",
    "init_args": {
        "auto_wrap_policy": [LAYER],
        "activation_checkpointing_policy": [LAYER],
        "state_dict_type": "sharded",  # full state dicts segfault on CPU (see cpu_fsdp.py)
    },
}
# layout: (records per micro-batch and rank, how it starts, extra arguments); DDP is started by
# Lightning's own launcher, FSDP by torchrun (the multi-node recipe of docs/distributed.md)
LAYOUTS = {
    "single": (2 * B, "here", []),
    "accumulate": (B, "here", ["--trainer.accumulate_grad_batches", "2"]),
    "ddp": (B, "lightning", ["--trainer.devices", "2", "--trainer.strategy", "ddp"]),
    "fsdp": (B, "torchrun", ["--trainer.devices", "2", "--trainer.strategy", json.dumps(CPU_FSDP),
                             "--trainer.enable_checkpointing", "true"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def train(tmp_path_factory, tiny_llama_dir, equal_length_data):
    """``train(method, layout)`` → the adapter folder of that run (each run made once)."""

    @cache
    def run(method: str, layout: str) -> Path:
        out = tmp_path_factory.mktemp(f"{method}-{layout}")
        batch_size, start, extra = LAYOUTS[layout]
        args = fit_args(tiny_llama_dir, equal_length_data, out, METHOD_ARGS[method], batch_size, *extra)
        fit_here(args) if start == "here" else launch(args, torchrun=start == "torchrun")
        return out / "adapter"

    return run


def assert_same_adapter(adapter: Path, reference: Path) -> None:
    assert adapter_meta(adapter)["selection"] == adapter_meta(reference)["selection"]
    got, want = adapter_tensors(adapter), adapter_tensors(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")


def test_equal_length_data_has_equal_token_counts(tiny_llama_dir, equal_length_data):
    """The premise of the comparisons: no padding, and the same number of supervised tokens per record."""
    data = InstructionDataModule(
        train_files=[str(equal_length_data)],
        tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir),
        prompt_style="chat",
        max_length=64,
        batch_size=16,
    )
    data.setup("fit")
    for batch in data.train_dataloader():
        assert bool(batch["attention_mask"].all())
        supervised = (batch["labels"] != -100).sum(dim=1)
        assert bool((supervised == supervised[0]).all())


@pytest.mark.parametrize("method", METHOD_ARGS)
def test_ddp_two_ranks_equal_one_process_double_batch(train, method):
    registered(method)
    assert_same_adapter(train(method, "ddp"), train(method, "single"))


@pytest.mark.parametrize("method", METHOD_ARGS)
def test_accumulating_two_batches_equals_double_batch(train, method):
    registered(method)
    assert_same_adapter(train(method, "accumulate"), train(method, "single"))


FSDP_METHODS = list(METHOD_ARGS)


@pytest.mark.parametrize("method", FSDP_METHODS)
def test_fsdp_two_ranks_equal_one_process_double_batch(train, method):
    registered(method)
    adapter = train(method, "fsdp")
    assert_same_adapter(adapter, train(method, "single"))
    checkpoint = next((adapter.parent / "checkpoints").glob("*.ckpt"))  # a folder: sharded state
    trainable = {f"model.{name}" for name in trainable_names(adapter)}
    # torch.distributed.checkpoint flattens {"model": state_dict, "optimizer_0": ...} into "model.<key>"
    saved = {key.removeprefix("model.") for key in sharded_checkpoint_keys(checkpoint) if key.startswith("model.")}
    assert saved and saved <= trainable, sorted(saved - trainable)[:5]


@pytest.mark.parametrize("method", METHOD_ARGS)
def test_training_moved_the_weights(train, method):
    """Guards the comparisons above against passing on an adapter that never trained."""
    registered(method)
    assert largest_update(train(method, "single")) > 100 * TOLERANCE["atol"]


def trainable_names(adapter: Path) -> set[str]:
    """Names of the parameters that trained, read back by rebuilding the run's model."""
    meta = adapter_meta(adapter)
    model = load_model(meta["base"]["name_or_path"], "float32", "sdpa", False)
    for p in model.parameters():
        p.requires_grad_(False)
    method = method_from_config(meta["method"], meta["config"])
    method_hooks(method).ftzoo_rewrite_model(model=model, selection=meta["selection"])
    return {name for name, p in model.named_parameters() if p.requires_grad}


def sharded_checkpoint_keys(folder: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
