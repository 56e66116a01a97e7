"""What one real 2-process DDP fit (gloo, started by Lightning's own launcher) does, rank by rank.

The run (``configs/distributed/ddp_cpu.yaml``): 13 records of different lengths (odd, so the
ranks cannot split them evenly), 2 records per rank and micro-batch, grouped by length, 2
accumulated micro-batches per optimizer step, bf16 autocast, 2 epochs, a checkpoint per epoch,
and the adapter written to the logger's folder (the default, which needs ``trainer.log_dir``:
a collective, so every rank must ask for it). The method, :class:`dist_probes.RankChoice`, would train a
different layer on each rank if ranks selected for themselves; it and
:class:`dist_probes.BatchLog` write what every rank did into files that these tests read.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import pairwise

import pytest
import torch
from dist_runs import REPO, adapter_meta, adapter_tensors, fit_args, launch

pytestmark = pytest.mark.distributed  # starts several processes

RECORDS = 13


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, varied_length_data) -> dict:
    out = tmp_path_factory.mktemp("ddp-run")
    logs = out / "logs"
    logs.mkdir()
    method = ["--model.method", "dist_probes.RankChoice", "--model.method.log_dir", str(logs)]
    callbacks = [{"class_path": "dist_probes.BatchLog", "init_args": {"log_dir": str(logs)}}]
    args = fit_args(
        tiny_llama_dir, varied_length_data, out, method, 2,
        "--model.adapter_dir", "null",  # the default: <log_dir>/adapter
        "--data.group_by_length", "true",
        "--data.max_length", "128",  # keeps every record whole
        "--trainer.precision", "bf16-mixed",
        "--trainer.accumulate_grad_batches", "2",
        "--trainer.max_epochs", "2",
        "--trainer.max_steps", "-1",
        "--trainer.callbacks", json.dumps(callbacks),
        "--trainer.enable_checkpointing", "true",
        "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(out),
        "--trainer.logger.name", "run",
        "--trainer.logger.version", "0",
        "--config", str(REPO / "configs" / "distributed" / "ddp_cpu.yaml"),  # 2 CPU ranks, strategy ddp
    )  # fmt: skip
    output = launch(args)
    return {"out": out / "run" / "version_0", "logs": logs, "output": output}


def rows(run: dict, name: str, rank: int) -> list[dict]:
    path = run["logs"] / f"{name}-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def layer_zero(selection: list[str]) -> bool:
    return bool(selection) and all(".layers.0." in name for name in selection)


def test_selection_is_made_once_on_rank_zero_and_used_by_every_rank(run):
    assert len(rows(run, "select", 0)) == 1 and rows(run, "select", 1) == []
    chosen = rows(run, "select", 0)[0]["selection"]
    assert layer_zero(chosen)
    assert [r["selection"] for r in rows(run, "rewrite", 0)] == [chosen]
    assert [r["selection"] for r in rows(run, "rewrite", 1)] == [chosen]
    assert adapter_meta(run["out"] / "adapter")["selection"] == chosen


def record_ids(texts: list[str]) -> list[int]:
    return [int(re.search(r"#(\d+)\.", text).group(1)) for text in texts]


@pytest.mark.parametrize("epoch", [0, 1])
def test_each_epoch_covers_every_record_and_repeats_only_the_padding(run, epoch):
    """DistributedSampler's rule: (-13) % 2 = 1 record is seen twice per epoch, none is dropped,
    and both ranks run the same number of batches (else DDP would hang at the epoch end)."""
    batches = {rank: [r for r in rows(run, "batches", rank) if r["epoch"] == epoch] for rank in (0, 1)}
    assert len(batches[0]) == len(batches[1]) == 4  # ceil(13 / 2) = 7 records per rank, 2 per batch
    seen = Counter(i for rank in (0, 1) for batch in batches[rank] for i in record_ids(batch["texts"]))
    assert set(seen) == set(range(RECORDS))
    assert sum(seen.values()) == RECORDS + (-RECORDS) % 2


def test_batches_group_records_of_similar_length(run):
    """With group_by_length, a rank's batches in an epoch cover disjoint length ranges."""
    for rank in (0, 1):
        for epoch in (0, 1):
            spans = sorted(
                (min(r["lengths"]), max(r["lengths"])) for r in rows(run, "batches", rank) if r["epoch"] == epoch
            )
            assert all(a[1] <= b[0] for a, b in pairwise(spans)), (rank, epoch, spans)


def test_checkpoint_holds_only_the_trainable_tensors(run):
    chosen = rows(run, "select", 0)[0]["selection"]
    checkpoints = sorted((run["out"] / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    state = torch.load(checkpoints[-1], weights_only=True)
    assert set(state["state_dict"]) == {f"model.{name}" for name in chosen}
    assert state["ftzoo"]["selection"] == chosen


def test_adapter_is_written_once_by_rank_zero_atomically(run):
    adapter = run["out"] / "adapter"
    assert len(rows(run, "save", 0)) == 1 and rows(run, "save", 1) == []
    assert not [p.name for p in adapter.parent.iterdir() if p.name.startswith(".adapter")]  # no temporary left
    tensors = adapter_tensors(adapter)
    assert layer_zero(sorted(tensors)) and all(bool(t.isfinite().all()) for t in tensors.values())
    assert adapter_meta(adapter)["info"]["global_step"] == 4  # 2 epochs x 4 micro-batches / 2 accumulated
