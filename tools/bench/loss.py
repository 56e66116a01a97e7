"""The response-token loss against transformers' ``labels=`` loss, on the quickstart's steps.

Both losses have the same value and gradients (``tests/zoo/test_loss.py``); they differ in
work. ``labels=`` projects every position onto the vocabulary; :func:`zoo.loss.response_loss`
projects only the positions that predict a response token. At SmolLM2-135M's shape the
49,152 × 576 head is about a fifth of the forward pass's multiply-adds, and most of a
quickstart batch is prompt.

Setting: SmolLM2-135M's shape with random weights (:data:`tools.bench.shapes.SMOLLM2_135M`;
timing does not depend on the values), the quickstart's S²FT selection and bf16 autocast,
and its first ``batches`` training batches (generated arithmetic, chat template, batch 8,
grouped by length; the real SmolLM2 tokenizer). Each round times every batch with each
loss in turn (forward, backward, AdamW); the median step over ``rounds`` rounds after one
warm-up round is reported, with the bytes autograd saves for backward (counted once per
storage, weights left out) of the first batch.

Usage::

    python -m tools.bench.loss --docs docs/benchmarks.md
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from tools.bench.measure import SavedForBackward, storage_key
from tools.bench.shapes import SMOLLM2_135M, TOKEN_IDS, llama_config, random_llama, replace_docs_section
from zoo.loss import IGNORE_INDEX, response_loss
from zoo.outputs import atomic_file
from zoo.plugins import method_class
from zoo.prepare import prepare

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Response-token loss"
SMOLLM2_LAYERS = 30
Loss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def labels_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """transformers' own loss: logits at every position."""
    return model(**batch, use_cache=False).loss


LOSSES: dict[str, Loss] = {"labels=": labels_loss, "response tokens": response_loss}


def quickstart_batches(count: int, config: Path = REPO / "configs" / "quickstart.yaml") -> list[dict[str, torch.Tensor]]:
    """The first ``count`` training batches of the quickstart's data module."""
    from datamodules import ArithmeticDataModule
    from zoo.loading import load_tokenizer

    recipe = yaml.safe_load(config.read_text())
    data = ArithmeticDataModule(tokenizer=load_tokenizer(recipe["model"]["model"]), **recipe["data"]["init_args"])
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append({key: batch[key] for key in ("input_ids", "attention_mask", "labels")})
        if len(batches) == count:
            break
    return batches


def quickstart_method(config: Path = REPO / "configs" / "quickstart.yaml") -> Any:
    method = yaml.safe_load(config.read_text())["model"]["method"]
    return method_class(method["class_path"])(**method.get("init_args", {}))


def saved_bytes(model: nn.Module, loss: Loss, batch: dict[str, torch.Tensor]) -> int:
    """Bytes autograd saves for backward in one forward pass (weights and buffers left out)."""
    skip = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    with SavedForBackward(skip) as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(model, batch)
    count = saved.nbytes()  # while `value` holds the graph
    del value
    return count


def bench_loss(
    batches: int = 8,
    rounds: int = 3,
    layers: int = SMOLLM2_LAYERS,
    threads: int | None = None,
    output: str | None = None,
    docs: str | None = None,
) -> dict[str, Any]:
    """Time quickstart steps with each loss, side by side.

    Args:
        batches: training batches per round.
        rounds: timed rounds (after one warm-up round).
        layers: blocks of the SmolLM2-shaped model (30: the real depth).
        threads: torch threads (default: torch's choice).
        output: JSON file (default ``bench_results/loss.json``).
        docs: Markdown file whose "Response-token loss" section is rewritten.
    """
    if threads:
        torch.set_num_threads(threads)
    data = quickstart_batches(batches)
    model = random_llama(llama_config(SMOLLM2_135M, layers, **TOKEN_IDS["smollm2"]), torch.float32, "cpu", seed=0)
    trainable = [parameter for _, parameter in prepare(model, quickstart_method()).trainable]
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    steps: dict[str, list[float]] = {name: [] for name in LOSSES}
    for round_ in range(rounds + 1):
        for name, loss in LOSSES.items():
            started = time.perf_counter()
            for batch in data:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    value = loss(model, batch)
                value.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if round_:  # the first round warms up
                steps[name].append((time.perf_counter() - started) / len(data))
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    labelled = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in data)
    results = {
        "command": "python -m tools.bench.loss" + (f" --layers {layers}" if layers != SMOLLM2_LAYERS else ""),
        "batches": batches,
        "rounds": rounds,
        "layers": layers,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "response_share": labelled / tokens,
        "losses": {
            name: {"step_seconds": statistics.median(times), "steps": times, "saved_bytes": saved_bytes(model, LOSSES[name], data[0])}
            for name, times in steps.items()
        },
    }
    results["speedup"] = results["losses"]["labels="]["step_seconds"] / results["losses"]["response tokens"]["step_seconds"]
    path = Path(output or REPO / "bench_results" / "loss.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    if docs:
        replace_docs_section(Path(docs), SECTION, docs_section(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    reference = results["losses"]["labels="]
    lines = ["| loss | step (median) | vs labels= | saved for backward (first batch) |", "| --- | --- | --- | --- |"]
    for name, row in results["losses"].items():
        lines.append(
            f"| {name} | {row['step_seconds'] * 1000:.0f} ms | {row['step_seconds'] / reference['step_seconds']:.2f} | "
            f"{row['saved_bytes'] / 2**20:.1f} MiB |"
        )
    return "\n".join(lines)


def docs_section(results: dict[str, Any]) -> str:
    setting = (
        f"Written by `{results['command']}` (`bench_results/loss.json`; {results['threads']} threads, load average "
        f"{results['load_average']:.2f}). The quickstart's S²FT steps at SmolLM2-135M's shape ({results['layers']} "
        f"layers, random weights, bf16 autocast), {results['batches']} of its batches, median of {results['rounds']} "
        f"rounds; {results['response_share']:.0%} of the tokens are response tokens. Both losses have the same value "
        "and gradients; the response-token loss, which `lightning fit` uses, computes logits only where a response "
        f"token is predicted: **{results['speedup']:.2f}× faster steps**. How it is measured: `tools/bench/loss.py`."
    )
    return f"{SECTION}\n\n{setting}\n\n{format_table(results)}\n"


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(bench_loss, as_positional=False)
