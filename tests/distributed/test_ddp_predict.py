"""``lightning predict`` on 2 DDP ranks (gloo, Lightning's own launcher): each rank predicts its
shard, and the PredictionWriter on rank 0 writes every record once, in the data's order."""

from __future__ import annotations

import json

import pytest
from dist_runs import REPO, launch
from tiny_models import save_tiny_model

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


CPU_FSDP = {
    "class_path": "cpu_fsdp.CPUFSDPStrategy",
    "init_args": {"auto_wrap_policy": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"]},
}


def test_fsdp_ranks_decode_in_lockstep_and_answer_as_one_process(tmp_path, varied_length_data):
    """Under FSDP every forward pass gathers the layers' weights, a collective of both ranks. With a
    context of 72 tokens the longest prompts (64-70 tokens) end their answers early: rank 0 (records
    0, 2, ..., 12, one per batch) decodes 70 tokens, rank 1 (1, 3, ..., 11 and 0 again) 77. The one
    generation path keeps the ranks in lockstep (a rank that is done runs idle passes; without them
    rank 1's last passes wait forever) and the answers are those of one process."""
    model = save_tiny_model(tmp_path / "model", "llama-gqa", max_position_embeddings=72)

    def predict(out, *extra):
        launch([
            "predict",
            "--model.model", str(model),
            "--data", "datamodules.InstructionDataModule",
            "--data.predict_files", f"[{varied_length_data}]",
            "--data.prompt_style", "chat",
            "--data.eval_batch_size", "1",
            "--data.max_new_tokens", "12",
            "--trainer.accelerator", "cpu",
            "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks", "zoo.callbacks.PredictionWriter",
            "--trainer.callbacks.output_file", str(out),
            *extra,
        ], torchrun=bool(extra))  # fmt: skip
        return [json.loads(line)["generation"] for line in out.read_text().splitlines()]

    alone = predict(tmp_path / "alone.jsonl")
    sharded = predict(tmp_path / "fsdp.jsonl", "--trainer.devices", "2", "--trainer.strategy", json.dumps(CPU_FSDP))
    assert len(set(map(len, alone))) > 1, "answers of different lengths: the ranks finish at different steps"
    assert sharded == alone
