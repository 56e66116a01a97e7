"""The one generation path against Hugging Face ``generate``, on the quickstart's evaluation.

``lightning test`` answers each batch of the data module through
:func:`zoo.inference.greedy_answers` (the continuous batcher); before, it called ``generate`` on
the batch. This times both on the same batches, side by side in one run: the real
SmolLM2-135M-Instruct, the quickstart's test problems (chat template, grouped by length,
``eval_batch_size``, ``max_new_tokens`` of its config), in float32 and under the bf16 autocast
the recipe evaluates with. Rounds alternate the two paths so that a busy machine slows both
alike; the median round is reported (wall-clock and this process's CPU time, which a busy
machine disturbs less), with the answers the two paths share::

    python -m tools.bench.generation --output bench_results/generation.json
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import GenerationConfig

from datamodules import ArithmeticDataModule
from zoo.inference import greedy_answers
from zoo.loading import load_model, load_tokenizer
from zoo.outputs import atomic_file

QUICKSTART = "configs/quickstart.yaml"


def generate_batch(model: Any, tokenizer: Any, batch: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    """What ``lightning test`` did before the one path: ``generate`` on the padded batch."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id
    )
    prompt = batch["prompt_input_ids"]
    out = model.generate(input_ids=prompt, attention_mask=batch["prompt_attention_mask"], generation_config=config)
    return tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)


def one_path_batch(model: Any, tokenizer: Any, batch: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    """What ``lightning test`` does now (:meth:`zoo.task_accuracy.EvaluationSteps._generate`)."""
    rows = zip(batch["prompt_input_ids"].tolist(), batch["prompt_attention_mask"].tolist())
    prompts = [[t for t, real in zip(ids, mask) if real] for ids, mask in rows]
    return greedy_answers(model, tokenizer, prompts, max_new_tokens, len(prompts))


PATHS = {"generate": generate_batch, "greedy_answers": one_path_batch}


def bench(
    model: str = "smollm2-135m",
    config: str = QUICKSTART,
    num_test: int | None = None,
    rounds: int = 1,
    precisions: tuple[str, ...] = ("float32", "bf16-autocast"),
    threads: int | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Time both paths over the test split of the recipe's data module.

    Args:
        model: the base model.
        config: the recipe whose data settings are used (``data.init_args``).
        num_test: test problems (default: the recipe's).
        rounds: timed rounds per path and precision (alternating).
        precisions: ``float32`` and/or ``bf16-autocast`` (float32 weights, bf16 matmuls: ``bf16-mixed``).
        threads: torch's CPU threads (default: torch's choice, one per core).
        output: write the results here as JSON.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    recipe = yaml.safe_load(Path(config).read_text())
    settings = dict(recipe["data"]["init_args"], num_train=0, num_val=0)
    if num_test is not None:
        settings["num_test"] = num_test
    tokenizer = load_tokenizer(model)
    data = ArithmeticDataModule(tokenizer=tokenizer, **settings)
    data.setup("test")
    batches = list(data.test_dataloader())
    network = load_model(model, "float32").eval()
    results: dict[str, Any] = {
        "model": model, "items": sum(len(b["tasks"]) for b in batches), "batch_size": data.eval_batch_size,
        "max_new_tokens": data.max_new_tokens, "threads": torch.get_num_threads(), "load_before": os.getloadavg(),
    }  # fmt: skip
    for precision in precisions:
        autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16-autocast" else contextlib.nullcontext()
        seconds: dict[str, list[float]] = {name: [] for name in PATHS}
        cpu: dict[str, list[float]] = {name: [] for name in PATHS}
        answers: dict[str, list[str]] = {}
        for _ in range(rounds):
            for name, path in PATHS.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                with torch.inference_mode(), autocast:  # as Lightning evaluates
                    answers[name] = [a for b in batches for a in path(network, tokenizer, b, data.max_new_tokens)]
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        median = {name: statistics.median(s) for name, s in seconds.items()}
        median_cpu = {name: statistics.median(s) for name, s in cpu.items()}
        same = sum(a == b for a, b in zip(answers["generate"], answers["greedy_answers"]))
        correct = {
            name: sum(data.is_correct(t, g, a) for t, g, a in zip(_tasks(batches), texts, _answers(batches)))
            for name, texts in answers.items()
        }
        results[precision] = {
            "seconds": median, "all_seconds": seconds, "ratio": median["greedy_answers"] / median["generate"],
            "cpu_seconds": median_cpu, "cpu_ratio": median_cpu["greedy_answers"] / median_cpu["generate"],
            "same_answers": same, "correct": correct,
        }  # fmt: skip
        print(precision, json.dumps(results[precision]), flush=True)
    results["load_after"] = os.getloadavg()
    if output is not None:
        with atomic_file(output) as handle:
            json.dump(results, handle, indent=2)
    return results


def _tasks(batches: list[dict[str, Any]]) -> list[str]:
    return [t for b in batches for t in b["tasks"]]


def _answers(batches: list[dict[str, Any]]) -> list[Any]:
    return [a for b in batches for a in b["answers"]]


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(bench, as_positional=False)
