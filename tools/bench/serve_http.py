"""Load test of the HTTP server: concurrent OpenAI clients against continuous batching, and
against the same server decoding one request at a time, side by side in one run.

``python -m tools.bench.serve --http true --docs docs/benchmarks.md`` (see :func:`bench_http`):

* adapters: ``adapters`` of the base model, in turn of four methods: S²FT (its plugin,
  default budget), ftzoo's LoRA and DoRA and sparse masks, built as
  :func:`tools.bench.serve.perturbed_adapter` builds them (prepared as ``fit`` prepares them,
  trainable values perturbed), saved to a temporary folder, recorded as trained with the chat
  template;
* two servers (``python -m zoo.server``, :class:`zoo.server.process.ServerProcess`),
  the same but for ``--batch_size``: ``batched`` (the most clients) and ``one_at_a_time``
  (1: each request decoded alone, the baseline);
* for each number of clients, each server in turn gets the same load: every client sends
  ``rounds`` chat requests one after the other, request ``i`` naming adapter
  ``i mod adapters`` (its prompt :func:`prompt_for`: numbered, no two alike), greedy, at most ``max_tokens`` tokens (the ``openai`` client, no retries);
* measured per server and number of clients: requests/s and completion tokens/s over the
  wall time, p50/p99 latency, failures (an exception or an error status), and the most
  requests the server decoded together (its ``/load``);
* where the CPU went, counted rather than timed (so a busy machine changes it little): CPU
  seconds per request of the server's decoding loop (its thread's, from ``/load``), of the
  rest of the server's process (the HTTP front end, and torch's other threads when there are
  several; from ``/proc``, Linux) and of the clients (this process).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tools.bench.shapes import replace_docs_section
from zoo.adapter import Adapter, BaseModelInfo, save_adapter
from zoo.inference import MixedAdapterModel, read_adapter
from zoo.loading import load_model, load_tokenizer
from zoo.outputs import atomic_file
from zoo.server.process import ServerProcess

SECTION = "## Serving over HTTP"
SERVERS = ("one_at_a_time", "batched")
TARGET = "64 clients: zero failures and batched requests/s ≥ 6× one at a time"
SPEEDUP = 6.0
METHODS = ("s2ft", "lora", "dora", "sparse")
"""The methods of the served adapters, in turn."""
PROMPTS = [
    "Sam has 12 apples. He buys 7 more and gives away 5. How many apples does Sam have now?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "A train travels 60 km in 1.5 hours. What is its average speed?",
    "Name three colours of the rainbow.",
    "Is 17 a prime number? Explain briefly.",
    "Give a synonym for 'happy'.",
    "What is 15% of 80?",
]


def prompt_for(i: int, tag: str = "") -> str:
    """Request ``i``'s prompt: one of :data:`PROMPTS`, numbered, so that no two requests of a load
    are the same text (a prefix cache shares the chat template's start between them, as it would
    between real users' requests, but never a whole prompt)."""
    return f"{tag}{i + 1}. {PROMPTS[i % len(PROMPTS)]}"


def make_adapters(base_model: str, folder: Path, count: int, lora_rank: int, seed: int) -> tuple[dict[str, Path], str]:
    """Save ``count`` adapters of ``base_model`` under ``folder``, of :data:`METHODS` in turn.

    Returns:
        ``(name → folder, where the S²FT adapters come from)``.
    """
    from tools.bench.serve import perturbed_adapter, s2ft_adapters  # the serving benchmark's builders
    from tools.bench.shapes import method_configs

    model = load_model(base_model).eval()
    info = BaseModelInfo.of(model, base_model)
    s2ft, source = s2ft_adapters(model, info, -(-count // len(METHODS)), seed)
    configs = method_configs(lora_rank, lora_dropout=0.0)
    paths = {}
    for i in range(count):
        method, n = METHODS[i % len(METHODS)], i // len(METHODS)
        name = f"{method}-{n}"
        if method == "s2ft":
            adapter = s2ft[name]
        else:
            registered, config = configs[method]
            adapter = perturbed_adapter(registered, model, info, seed + i, **config)
        adapter.info["prompt_style"] = "chat"
        paths[name] = save_adapter(adapter, folder / name)
    return paths, source


def adapter_server(base_model: str, count: int, lora_rank: int) -> tuple[MixedAdapterModel, Any, dict[str, Adapter]]:
    """The load test's ``count`` adapters (:func:`make_adapters`) served in process: the
    :class:`zoo.inference.MixedAdapterModel` with all of them, the base's tokenizer, and the adapters."""
    with tempfile.TemporaryDirectory(prefix="ftzoo-bench-adapters-") as tmp:
        paths, _ = make_adapters(base_model, Path(tmp), count, lora_rank, 0)
        read = {name: read_adapter(path) for name, path in paths.items()}
    model, tokenizer = load_model(base_model).eval(), load_tokenizer(base_model)
    server = MixedAdapterModel(model, BaseModelInfo.of(model, base_model))
    for name, adapter in read.items():
        server.add_adapter(name, adapter)
    return server, tokenizer, read


async def run_load(
    url: str, names: list[str], clients: int, rounds: int, max_tokens: int, timeout: float, tag: str = ""
) -> dict:
    """``clients`` closed-loop clients, ``rounds`` requests each (prompts :func:`prompt_for` with ``tag``);
    the measurements of :func:`bench_http`."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)
    latencies: list[float] = []
    tokens, errors = 0, []

    async def one_client(c: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            i = c * rounds + r
            start = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=names[i % len(names)],
                    messages=[{"role": "user", "content": prompt_for(i, tag)}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
            except openai.OpenAIError as err:
                errors.append(f"{type(err).__name__}: {err}"[:200])
                continue
            latencies.append(time.perf_counter() - start)
            tokens += reply.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    return {
        "requests": len(latencies),
        "failures": len(errors),
        "errors": errors[:5],
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "completion_tokens": tokens,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q) - 1))]


def _load(server: ServerProcess) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/load", timeout=60) as reply:
        return json.loads(reply.read())


def bench_http(
    output: str,
    docs: str | None = None,
    base_model: str = "smollm2-135m",
    adapters: int = 16,
    clients: list[int] | None = None,
    rounds: int = 3,
    max_tokens: int = 32,
    lora_rank: int = 16,
    threads: int | None = None,
    request_timeout: float = 3600.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the load test (see the module docstring); write JSON to ``output`` and, with ``docs``,
    the "Serving over HTTP" section of that Markdown file."""
    clients = clients or [1, 8, 32, 64]
    config = {k: v for k, v in locals().items()}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ftzoo-bench-http-") as tmp:
        paths, source = make_adapters(base_model, Path(tmp), adapters, lora_rank, seed)
        print(f"built {adapters} adapters ({', '.join(paths)}; S²FT: {source})", flush=True)
        spec = "[" + ", ".join(f"{name}={path}" for name, path in paths.items()) + "]"
        common = ["--adapters", spec, "--max_new_tokens", str(max_tokens), "--max_tokens_limit", str(max_tokens)]
        common += ["--request_timeout", str(request_timeout), "--temperature", "0", "--log_level", "error"]
        if threads is not None:
            common += ["--threads", str(threads)]
        batch = {"one_at_a_time": 1, "batched": max(clients)}
        servers = {name: ServerProcess([*common, "--batch_size", str(size)]) for name, size in batch.items()}
        levels = []
        try:
            for server in servers.values():
                server.start()
            names = list(paths)
            for name, server in servers.items():  # warm up: every adapter once
                asyncio.run(run_load(server.url, names, len(names), 1, 4, request_timeout, tag="warm-up "))
            for count in clients:
                level: dict[str, Any] = {"clients": count}
                for name, server in servers.items():
                    before = _cpu_seconds(server)  # also starts the count of the most decoded together
                    level[name] = asyncio.run(run_load(server.url, names, count, rounds, max_tokens, request_timeout))
                    after = _cpu_seconds(server)
                    level[name]["most_together"] = after.pop("peak_running")
                    level[name]["cpu_s_per_request"] = {
                        part: (after[part] - before[part]) / max(level[name]["requests"], 1) for part in after
                    }
                    print(f"{count} clients, {name}: " + _summary(level[name]), flush=True)
                level["speedup"] = level["batched"]["requests_per_s"] / level["one_at_a_time"]["requests_per_s"]
                levels.append(level)
        finally:
            for server in servers.values():
                server.stop()
    results = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cpu": _cpu(),
        "load_average": [load_before, os.getloadavg()[0]],
        "s2ft_adapters": source,
        "config": config,
        "levels": levels,
    }
    with atomic_file(output) as handle:
        json.dump(results, handle, indent=2)
    print("\n" + http_table(results))
    if docs:
        replace_docs_section(Path(docs), SECTION, http_docs_section(results))
    return results


def _cpu_seconds(server: ServerProcess) -> dict[str, float]:
    """CPU seconds so far: the server's decoding loop, the rest of its process, this process (the
    clients); and the most requests decoded together since the last call."""
    load = _load(server)
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    process = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "decoding_loop": load["loop_cpu_seconds"],
        "rest_of_server": process - load["loop_cpu_seconds"],
        "clients": own.ru_utime + own.ru_stime,
        "peak_running": load["peak_running"],
    }


def _summary(m: dict[str, Any]) -> str:
    return (
        f"{m['requests_per_s']:.2f} req/s, {m['tokens_per_s']:.1f} tok/s, p50 {m['p50_s']:.2f} s, "
        f"p99 {m['p99_s']:.2f} s, {m['failures']} failed, at most {m['most_together']} together"
    )


def _cpu() -> str:
    from tools.bench.serve import _cpu_name

    return f"{_cpu_name().split(' (')[0]}, {os.cpu_count()} cores"


def http_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per number of clients)."""
    header = (
        "| clients | one at a time req/s | batched req/s | speedup | one at a time tok/s | batched tok/s "
        "| one at a time p50 / p99 (s) | batched p50 / p99 (s) | failures (one / batched) | most decoded together "
        "| CPU s per request, one / batched: decoding loop, rest of server, clients |"
    )
    lines = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in results["levels"]:
        one, many = level["one_at_a_time"], level["batched"]
        cells = [
            str(level["clients"]),
            f"{one['requests_per_s']:.2f}",
            f"{many['requests_per_s']:.2f}",
            f"{level['speedup']:.2f}×",
            f"{one['tokens_per_s']:.1f}",
            f"{many['tokens_per_s']:.1f}",
            f"{one['p50_s']:.2f} / {one['p99_s']:.2f}",
            f"{many['p50_s']:.2f} / {many['p99_s']:.2f}",
            f"{one['failures']} / {many['failures']}",
            str(many["most_together"]),
            " / ".join(_cpu_cell(m) for m in (one, many)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_cell(measured: dict[str, Any]) -> str:
    cpu = measured.get("cpu_s_per_request")  # runs before it was counted have none
    return ", ".join(f"{cpu[part]:.2f}" for part in ("decoding_loop", "rest_of_server", "clients")) if cpu else "–"


def verdict(results: dict[str, Any]) -> str:
    """Whether the run meets :data:`TARGET` at its largest number of clients."""
    top = max(results["levels"], key=lambda level: level["clients"])
    failures = top["one_at_a_time"]["failures"] + top["batched"]["failures"]
    met = failures == 0 and top["speedup"] >= SPEEDUP and top["clients"] >= 64
    return (
        f"At {top['clients']} clients: {failures} failures, batched {top['speedup']:.2f}× the one-at-a-time "
        f"requests/s: the target ({TARGET}) is {'met' if met else 'not met'}."
    )


def http_docs_section(results: dict[str, Any]) -> str:
    c = results["config"]
    threads = f" --threads {c['threads']}" if c["threads"] is not None else ""
    return (
        f"{SECTION}\n\n"
        f"Written by `python -m tools.bench.serve --http true{threads} --docs docs/benchmarks.md` "
        f"from `{c['output']}` "
        f"({results['date']}, torch {results['torch']}, {results['cpu']}; load average "
        f"{results['load_average'][0]:.2f} at the start and {results['load_average'][1]:.2f} at the end). "
        "How it is measured: the module docstring of `tools/bench/serve_http.py`.\n\n"
        f"- Base model `{c['base_model']}`, {c['adapters']} adapters of {len(METHODS)} methods in turn "
        f"({', '.join(METHODS)}; S²FT: {results['s2ft_adapters']}; LoRA and DoRA rank {c['lora_rank']}), "
        f"chat requests (numbered prompts, no two alike), greedy, at most {c['max_tokens']} new tokens; "
        f"each client sends {c['rounds']} requests one after the other; torch threads per server: "
        f"{c['threads'] if c['threads'] is not None else 'the server default (half the cores, at least 1)'}.\n"
        f"- One at a time: the same server with `--batch_size 1`; batched: `--batch_size {max(c['clients'])}` "
        "(continuous batching: a request joins the running batch at the next step, leaves it when done).\n\n"
        f"{http_table(results)}\n\n{verdict(results)}\n"
    )
