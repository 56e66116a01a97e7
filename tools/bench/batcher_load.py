"""The HTTP load test's work through the decoding loop alone: no HTTP, no clients, no front end.

``python -m tools.bench.batcher_load`` builds the load test's adapters
(:func:`tools.bench.serve_http.make_adapters`: ``adapters`` of S²FT, LoRA, DoRA and sparse masks
in turn), serves them from one :class:`zoo.inference.MixedAdapterModel`, and runs its load on a
:class:`zoo.inference.ContinuousBatcher` as the server's loop would: ``clients`` clients each
send ``requests`` chat requests one after the other (the next as soon as the last is answered;
request ``i`` names adapter ``i mod adapters``, the load test's prompts in the adapter's chat
template with its system prompt, numbered so that no two are the same text, greedy, at most ``max_tokens`` tokens, the server's
``kv_groups`` and ``prefill_chunk`` defaults, and its ``prefill_share`` unless given).

Settings: each number of torch ``threads``, with and without the prefix cache
(:mod:`zoo.inference.prefix_cache`, the server's default share of ``kv_cache_gb``; ``prefix_cache``),
and each of ``admit_shares`` (default: the server's ``admit_share``), in turn
within each of ``rounds`` rounds (so a busy spell of the machine falls on all of them); printed
and written to JSON per setting: the median wall seconds and generated tokens/s, the CPU seconds
of this thread, the steps and the rows decoded per step on average, the prompt tokens and those
the prefix cache gave.

What it answers: how the loop alone scales with threads (without the server's other threads
and the clients on the same cores), what the prefix cache saves on the load test's prompts, and
how the pace of admitting whole prompts (``admit_share``) keeps the batch full.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tools.bench.serve_http import adapter_server, prompt_for
from zoo.inference import ContinuousBatcher, GenerationRequest, prompt_ids
from zoo.outputs import atomic_file
from zoo.server.config import ServerConfig


def run_load(batcher: ContinuousBatcher, work: list[list[GenerationRequest]]) -> dict[str, float]:
    """Every client's requests, one after the other, through the batcher; what it took."""
    start, cpu = time.perf_counter(), time.thread_time()
    nexts = {client: 0 for client in range(len(work))}
    for client in nexts:
        batcher.submit((client, 0), work[client][0])
    generated = steps = rows = 0
    while batcher.busy:
        updates = batcher.step()
        steps += 1
        rows += len(batcher.rows)
        for update in updates:
            if update.completion is None:
                continue
            generated += len(update.completion.tokens)
            client = update.uid[0]
            nexts[client] += 1
            if nexts[client] < len(work[client]):
                batcher.submit((client, nexts[client]), work[client][nexts[client]])
    wall = time.perf_counter() - start
    cache = batcher.prefix_cache
    return {
        "wall_s": wall,
        "cpu_s": time.thread_time() - cpu,
        "tokens_per_s": generated / wall,
        "generated": generated,
        "steps": steps,
        "mean_rows": rows / max(steps, 1),
        "prompt_tokens": sum(len(r.ids) for requests in work for r in requests),
        "reused_prompt_tokens": cache.reused_tokens if cache is not None else 0,
    }


def batcher_load(
    output: str = "bench_results/batcher_load.json",
    base_model: str = "smollm2-135m",
    adapters: int = 16,
    clients: int = 64,
    requests: int = 2,
    max_tokens: int = 32,
    lora_rank: int = 16,
    threads: list[int] | None = None,
    rounds: int = 2,
    prefix_cache: list[bool] | None = None,
    admit_shares: list[float] | None = None,
) -> dict[str, Any]:
    """Measure (see the module docstring); write JSON to ``output``."""
    threads = threads or [1, 2]
    prefix_cache = prefix_cache if prefix_cache is not None else [False, True]
    config_args = {k: v for k, v in locals().items()}
    server, tokenizer, read = adapter_server(base_model, adapters, lora_rank)
    model, names = server.model, list(read)
    config = ServerConfig(batch_size=clients, max_new_tokens=max_tokens)
    admit_shares = admit_shares or [config.admit_share]
    work = []
    for client in range(clients):
        mine = []
        for r in range(requests):
            i = client * requests + r
            name = names[i % len(names)]
            ids = prompt_ids(tokenizer, [prompt_for(i)], "chat", [server.system_prompts[name]])[0]
            mine.append(GenerationRequest(ids, name, max_tokens))
        work.append(mine)
    settings = [(t, cached, share) for t in threads for cached in prefix_cache for share in admit_shares]
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for t, cached, share in settings:
            torch.set_num_threads(t)
            batcher = ContinuousBatcher(
                server, tokenizer, clients,
                max_batch_tokens=config.kv_budget(model.config),
                prefill_chunk=config.prefill_chunk,
                max_groups=config.kv_groups,
                prefill_share=config.prefill_share,
                admit_share=share,
                prefix_cache_tokens=config.prefix_cache_tokens(model.config) if cached else None,
            )  # fmt: skip
            batcher.eos = set()  # every answer max_tokens long: the same work in every setting
            label = f"{t} thread{'s' if t > 1 else ''}, prefix cache {'on' if cached else 'off'}, admit share {share:g}"
            results.setdefault(label, []).append(run_load(batcher, work))
            r = results[label][-1]
            print(f"{label:52s} {r['wall_s']:6.1f} s  {r['tokens_per_s']:6.1f} tok/s  cpu {r['cpu_s']:6.1f} s  "
                  f"{r['mean_rows']:.1f} rows a step", flush=True)  # fmt: skip
    summary = {
        label: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for label, runs in results.items()
    }
    report = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
        "config": config_args,
        "settings": summary,
        "runs": results,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(output) as handle:
        json.dump(report, handle, indent=2)
    first = summary[next(iter(summary))]["tokens_per_s"]
    print("\nmedian over rounds (tokens/s, relative to the first setting):")
    for label, s in summary.items():
        print(f"  {label:52s} {s['tokens_per_s']:6.1f}  {s['tokens_per_s'] / first:.2f}×  {s['mean_rows']:.1f} rows a step, "
              f"prompt tokens reused {s['reused_prompt_tokens']:.0f} of {s['prompt_tokens']:.0f}")  # fmt: skip
    return report


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(batcher_load, as_positional=False)
