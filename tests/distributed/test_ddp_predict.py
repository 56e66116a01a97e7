"""``lightning predict`` on 2 DDP ranks (gloo, Lightning's own launcher): each rank predicts its
shard, and the PredictionWriter on rank 0 writes every record once, in the data's order."""

from __future__ import annotations

import json

import pytest
from dist_runs import REPO, launch

pytestmark = pytest.mark.distributed  # starts several processes


def test_two_ranks_write_every_prediction_once_in_file_order(tmp_path, tiny_llama_dir, varied_length_data):
    out = tmp_path / "predictions.jsonl"
    launch([
        "predict",
        "--model.model", str(tiny_llama_dir),
        "--data", "datamodules.InstructionDataModule",
        "--data.predict_files", f"[{varied_length_data}]",
        "--data.prompt_style", "chat",
        "--data.eval_batch_size", "2",
        "--data.group_by_length", "true",  # batches out of file order
        "--data.max_new_tokens", "2",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.callbacks", "zoo.callbacks.PredictionWriter",
        "--trainer.callbacks.output_file", str(out),
        "--config", str(REPO / "configs" / "distributed" / "ddp_cpu.yaml"),
    ])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = [json.loads(line) for line in varied_length_data.read_text().splitlines()]
    assert len(rows) == len(records) == 13, "both ranks' rows, and the record repeated for rank 1 only once"
    assert [r["instruction"] in row["prompt"] for r, row in zip(records, rows)] == [True] * 13, "file order"
