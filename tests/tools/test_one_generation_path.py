"""``lightning test``, ``lightning predict``, ``tools.evaluate`` and the server's batching give the
same greedy answers on the same items: all four decode through :func:`zoo.inference.greedy_answers`
or the :class:`zoo.inference.ContinuousBatcher` under it, each with its own batches."""

from __future__ import annotations

import json

from datamodules import ArithmeticDataModule
from tools.evaluate import evaluate
from zoo.cli import build_cli
from zoo.inference import ContinuousBatcher, GenerationRequest, MixedAdapterModel, complete, read_adapter
from zoo.loading import load_model, load_tokenizer
from zoo.task_accuracy import EvaluationSteps

NEW_TOKENS = 6
ITEMS = 12


def lightning(stage: str, tiny, adapter, tmp_path, *extra: str):
    args = [stage, "--model.model", str(tiny.folder), "--model.adapter", str(adapter),
            "--data", "datamodules.ArithmeticDataModule", "--data.num_train", "0", "--data.num_val", "0",
            "--data.num_test", str(ITEMS), "--data.max_new_tokens", str(NEW_TOKENS), "--data.prompt_style", "chat",
            "--data.eval_batch_size", "5", "--data.group_by_length", "true",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), *extra]  # fmt: skip
    return build_cli(args)


def test_test_predict_evaluate_and_the_server_answer_alike(tiny, tmp_path, monkeypatch):
    folder = tiny.saved("s2ft", tmp_path / "adapter")
    tokenizer = load_tokenizer(str(tiny.folder))
    data = ArithmeticDataModule(num_train=0, num_val=0, num_test=ITEMS, prompt_style="chat", tokenizer=tokenizer)
    items = data.examples("test")
    prompts = [tuple(e.prompt_ids) for e in items]

    tested: dict[tuple[int, ...], str] = {}  # lightning test: what each step generated, by prompt
    generate = EvaluationSteps._generate

    def recorded(self, batch):
        texts = generate(self, batch)
        for ids, mask, text in zip(batch["prompt_input_ids"].tolist(), batch["prompt_attention_mask"].tolist(), texts):
            tested[tuple(t for t, real in zip(ids, mask) if real)] = text
        return texts

    monkeypatch.setattr(EvaluationSteps, "_generate", recorded)
    lightning("test", tiny, folder, tmp_path)
    monkeypatch.undo()
    assert set(tested) == set(prompts)
    test_answers = [tested[p] for p in prompts]

    out = tmp_path / "predictions.jsonl"
    lightning("predict", tiny, folder, tmp_path, "--trainer.callbacks", "zoo.callbacks.PredictionWriter",
              "--trainer.callbacks.output_file", str(out))  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [e.prompt for e in items]
    predicted = [r["generation"] for r in rows]

    results = evaluate(
        ArithmeticDataModule(num_train=0, num_val=0, num_test=ITEMS, prompt_style="chat", max_new_tokens=NEW_TOKENS),
        adapters=[f"arith={folder}"], batch_size=3, output=str(tmp_path / "eval"),
    )  # fmt: skip
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    evaluated = [g["generation"] for g in generations if g["entry"] == "arith"]
    base = [g["generation"] for g in generations if g["entry"] == "base"]
    assert results["items"] == {"arithmetic": ITEMS}

    model = load_model(str(tiny.folder)).eval()  # tools.serve --requests: the adapter unfused, in a mixed batch
    server = MixedAdapterModel(model, tiny.info)
    server.add_adapter("arith", read_adapter(folder))
    requests = [GenerationRequest(list(p), "arith" if i % 3 else None, NEW_TOKENS) for i, p in enumerate(prompts)]
    served = [done.text for done in complete(ContinuousBatcher(server, tokenizer, 4), requests)]

    assert test_answers == predicted == evaluated
    assert [served[i] for i in range(ITEMS) if i % 3] == [evaluated[i] for i in range(ITEMS) if i % 3]
    assert [served[i] for i in range(0, ITEMS, 3)] == [base[i] for i in range(0, ITEMS, 3)]
    assert evaluated != base, "the adapter changes some answers, so agreeing on them means something"
    assert len(set(evaluated)) > 1
