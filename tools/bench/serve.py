"""Serving benchmark: adapter switch latency and mixed-adapter decoding throughput.

Side by side in one run, on the CPU (SmolLM2-135M shape, random fp32 weights, or the real
model) and, when there is one, on the GPU (Llama-2-7B shape, random bf16 weights, a few
layers):

(a) switch latency per adapter (:class:`zoo.inference.AdapterSwitcher`): S²FT fuse/unfuse
    of its column blocks vs ftzoo's LoRA merge/unmerge of ``B A``, and, as a peer row, peft's
    own ``merge_adapter`` / ``unmerge_adapter``;
(b) greedy decoding throughput (tokens/s, prefill included) of one batch whose requests
    use 8 or 32 distinct adapters: S²FT and ftzoo's LoRA unfused
    (:class:`zoo.inference.MixedAdapterModel`) vs peft's mixed-adapter batches
    (``adapter_names=``, a peer row) vs the same batch on one fused model.

Adapters come from the installed plugins (:func:`tools.bench.shapes.method_configs`; S²FT
with its default, paper budgets): prepared on a copy of the base by
:func:`zoo.prepare.prepare`, perturbed, extracted. Without the S²FT plugin its adapters are
synthetic ``merged`` adapters with the same shape (dense deltas nonzero in 5% of the heads'
columns of ``o_proj`` and 2% of the channels' columns of ``down_proj``), and the report says
so. LoRA: rank 32 on q, k, v, up, down, random factors. Results go to JSON; ``--docs``
rewrites the "Serving" section of ``docs/benchmarks.md`` from them::

    python -m tools.bench.serve --output bench_results/serve.json --docs docs/benchmarks.md

``--http true`` runs the load test of the HTTP server instead (:mod:`tools.bench.serve_http`)::

    python -m tools.bench.serve --http true --threads 2 --docs docs/benchmarks.md
"""

from __future__ import annotations

import copy
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig

from tools.bench.shapes import (
    LLAMA2_7B,
    LORA_TARGETS,
    SERVE_TARGETS,
    SMOLLM2_135M,
    TOKEN_IDS,
    llama_config,
    method_configs,
    random_llama,
    replace_docs_section,
)
from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference import AdapterSwitcher, MixedAdapterModel, hooks_for, synchronize
from zoo.loading import load_model
from zoo.merging import merged_adapter
from zoo.outputs import atomic_file
from zoo.plugins import available_methods, method_class, method_name
from zoo.prepare import prepare

SECTION = "## Serving"
ROWS = ("s2ft", "lora", "peft_lora")
"""Adapters timed against each other: two ftzoo methods and peft's LoRA as a peer."""


@dataclass
class Setting:
    """One model shape on one device."""

    name: str
    description: str
    device: torch.device
    dtype: torch.dtype
    config: LlamaConfig | None
    """``None``: load the real model named in ``description``."""


def smollm2_135m_shape() -> LlamaConfig:
    return llama_config(SMOLLM2_135M, 30, max_position_embeddings=2048, **TOKEN_IDS["smollm2"])


def llama2_7b_shape(layers: int) -> LlamaConfig:
    return llama_config(LLAMA2_7B, layers, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def settings(real_model: bool, gpu_layers: int, gpu: bool) -> list[Setting]:
    cpu = Setting(
        "cpu",
        "SmolLM2-135M-Instruct (real weights), fp32" if real_model else "SmolLM2-135M shape, random fp32 weights",
        torch.device("cpu"),
        torch.float32,
        None if real_model else smollm2_135m_shape(),
    )
    out = [cpu]
    if gpu and torch.cuda.is_available():
        desc = f"Llama-2-7B shape ({gpu_layers} of 32 layers), random bf16 weights"
        out.append(Setting("gpu", desc, torch.device("cuda"), torch.bfloat16, llama2_7b_shape(gpu_layers)))
    return out


def build_base(setting: Setting, seed: int) -> nn.Module:
    """The base model of a setting, frozen, in eval mode, on its device."""
    if setting.config is None:
        model = load_model("smollm2-135m", "float32")
    else:
        setting.config._attn_implementation = "sdpa"
        model = random_llama(setting.config, setting.dtype, setting.device, seed)
    return model.to(setting.device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------- adapters


def s2ft_adapters(model: nn.Module, info: BaseModelInfo, count: int, seed: int) -> tuple[dict[str, Adapter], str]:
    """``count`` S²FT adapters (the plugin's, or synthetic ones of the same shape)."""
    if "s2ft" in available_methods():
        return {f"s2ft-{i}": perturbed_adapter("s2ft", model, info, seed + i) for i in range(count)}, "s2ft plugin"
    adapters = {f"s2ft-{i}": synthetic_s2ft(model, info, seed + i) for i in range(count)}
    return adapters, "synthetic (plugin not installed)"


def perturbed_adapter(
    method: str, model: nn.Module, info: BaseModelInfo, seed: int, scale: float = 0.02, **config: Any
) -> Adapter:
    """An adapter as ``fit`` would extract it, with random trained values instead of training:
    prepare a copy of the base (:func:`zoo.prepare.prepare`), perturb the trainable
    parameters, extract."""
    instance = method_class(method)(**config)
    prepared = prepare(copy.deepcopy(model), instance, calibration_batches=lambda: iter(()), seed=seed)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        for _, param in prepared.trainable:
            noise = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
            param.add_(scale * noise.to(param.dtype))
    tensors = prepared.hooks.ftzoo_extract_adapter(model=prepared.model, selection=prepared.selection)
    tensors = {k: v.detach().clone() for k, v in tensors.items()}
    return Adapter(method_name(instance), instance.config(), prepared.selection, info, tensors)


def lora_adapters(model: nn.Module, info: BaseModelInfo, count: int, rank: int, seed: int) -> dict[str, Adapter]:
    """``count`` adapters of ftzoo's LoRA (rank ``rank`` on :data:`LORA_TARGETS`)."""
    name, config = method_configs(rank, lora_dropout=0.0)["lora"]
    return {f"lora-{i}": perturbed_adapter(name, model, info, seed + i, **config) for i in range(count)}


def synthetic_s2ft(
    model: nn.Module, info: BaseModelInfo, seed: int, head_ratio: float = 0.05, channel_ratio: float = 0.02
) -> Adapter:
    """A ``merged`` adapter shaped like S²FT's: whole columns of ``o_proj`` (heads) and
    ``down_proj`` (channels), at least one unit per layer."""
    generator = torch.Generator().manual_seed(seed)
    config, deltas = model.config, {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for name, param in model.named_parameters():
        if name.endswith("o_proj.weight"):
            heads = torch.randperm(config.num_attention_heads, generator=generator)[
                : max(1, round(head_ratio * config.num_attention_heads))
            ]
            cols = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        elif name.endswith("down_proj.weight"):
            cols = torch.randperm(param.shape[1], generator=generator)[: max(1, round(channel_ratio * param.shape[1]))]
        else:
            continue
        delta = torch.zeros(param.shape, dtype=param.dtype)
        delta[:, cols] = (0.02 * torch.randn(param.shape[0], len(cols), generator=generator)).to(param.dtype)
        deltas[name] = delta.to(param.device)
    return merged_adapter(deltas, info)


def peft_model(base: nn.Module, count: int, rank: int, seed: int) -> nn.Module:
    """The peer row: ``base`` wrapped by peft with ``count`` random LoRA adapters ``lora-i``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, lora_dropout=0.0, init_lora_weights=False
    )
    model = get_peft_model(base, config, adapter_name="lora-0")
    for i in range(1, count):
        model.add_adapter(f"lora-{i}", config)
    return model.eval()


# ------------------------------------------------------------------------------- timing


def interleaved_seconds(runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each run after a warm-up, timed round-robin, so that load from
    other processes on the machine falls on every variant alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def switch_ms(
    switchers: dict[str, AdapterSwitcher], peft: nn.Module, count: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median ms of one switch per row, interleaved: each ftzoo switcher unfuses the previous
    adapter and fuses the next (S²FT its columns, LoRA ``B A``); peft runs
    ``unmerge_adapter``, ``set_adapter``, ``merge_adapter``."""
    names = {row: list(switcher.adapters)[:count] for row, switcher in switchers.items()}
    times: dict[str, list[float]] = {row: [] for row in [*switchers, "peft_lora"]}
    merged = False
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first pass warms up
            for i in range(count):
                for row, switcher in switchers.items():
                    times[row].append(switcher.activate(names[row][i]))
                synchronize(device)
                start = time.perf_counter()
                if merged:
                    peft.unmerge_adapter()
                peft.set_adapter(f"lora-{i}")
                peft.merge_adapter()
                merged = True
                synchronize(device)
                times["peft_lora"].append(time.perf_counter() - start)
        for switcher in switchers.values():
            switcher.activate(None)
        peft.unmerge_adapter()
    return {row: 1e3 * statistics.median(t[count:]) for row, t in times.items()}


def generation_config(new_tokens: int, pad: int, eos: int) -> GenerationConfig:
    """Greedy decoding with the KV cache (``generate``: peft's mixed batches need it, and the rows are
    timed alike); min_new_tokens: every row decodes exactly new_tokens, whatever the random weights say."""
    return GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos
    )


def random_prompts(vocab: int, rows: int, length: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ------------------------------------------------------------------------------- one setting


def generate_run(model: nn.Module, prompts: dict, config: GenerationConfig, **kwargs: Any) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model.generate(**prompts, generation_config=config, **kwargs)

    return run


def served_run(server: MixedAdapterModel, names: list[str], plain: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with server.assign(names):
            plain()

    return run


def bench_setting(
    setting: Setting,
    adapter_counts: list[int],
    batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    repeats: int,
    switch_adapters: int,
    lora_rank: int,
    seed: int,
) -> dict[str, Any]:
    """Switch latency and throughput of one setting (see the module docstring)."""
    print(f"\n== {setting.name}: {setting.description} on {setting.device}", flush=True)
    base = build_base(setting, seed)
    info = BaseModelInfo.of(base, f"bench-{setting.name}")
    most = max(adapter_counts)
    adapters = {}
    adapters["s2ft"], s2ft_source = s2ft_adapters(base, info, most, seed)
    adapters["lora"] = lora_adapters(base, info, most, lora_rank, seed)
    bases = {"s2ft": base, "lora": copy.deepcopy(base)}  # one fused adapter per base at a time
    peft = peft_model(copy.deepcopy(base), most, lora_rank, seed)
    fused = copy.deepcopy(base)  # the same batch on one fused model
    first = next(iter(adapters["s2ft"].values()))
    hooks_for(first).ftzoo_fuse_adapter(model=fused, adapter=first, scale=1.0)
    print(f"built {most} S²FT ({s2ft_source}), {most} ftzoo LoRA and {most} peft LoRA adapters (r={lora_rank})")

    switchers = {row: AdapterSwitcher(bases[row], info) for row in bases}
    for row, switcher in switchers.items():
        for name, adapter in adapters[row].items():
            switcher.add(name, adapter)
    switch = switch_ms(switchers, peft, switch_adapters, repeats, setting.device)
    print("switch ms: " + ", ".join(f"{row} {ms:.3f}" for row, ms in switch.items()), flush=True)

    prompts = random_prompts(base.config.vocab_size, batch_size, prompt_tokens, setting.device, seed)
    gen = generation_config(new_tokens, base.config.pad_token_id or 0, base.config.eos_token_id)
    servers = {row: MixedAdapterModel(bases[row], info) for row in bases}
    for row, server in servers.items():
        for name, adapter in adapters[row].items():
            server.add_adapter(name, adapter)
    runs = {"fused": generate_run(fused, prompts, gen)}
    for count in adapter_counts:
        for row, server in servers.items():
            names = [f"{row}-{i % count}" for i in range(batch_size)]
            runs[f"{row}-{count}"] = served_run(server, names, generate_run(bases[row], prompts, gen))
        peft_names = [f"lora-{i % count}" for i in range(batch_size)]
        runs[f"peft_lora-{count}"] = generate_run(peft, prompts, gen, adapter_names=peft_names)
    tps = {name: batch_size * new_tokens / s for name, s in interleaved_seconds(runs, repeats, setting.device).items()}
    print("tokens/s: " + ", ".join(f"{k} {v:.1f}" for k, v in tps.items()), flush=True)
    rows = []
    for count in adapter_counts:
        row = {"adapters": count, "tokens_per_s": {r: tps[f"{r}-{count}"] for r in ROWS} | {"fused": tps["fused"]}}
        for other in ("lora", "peft_lora", "fused"):
            row[f"s2ft_vs_{other}"] = tps[f"s2ft-{count}"] / row["tokens_per_s"][other]
        rows.append(row)
    device = torch.cuda.get_device_name(setting.device) if setting.device.type == "cuda" else _cpu_name()
    return {
        "setting": setting.name,
        "model": setting.description,
        "device": device,
        "s2ft_adapters": s2ft_source,
        "switch_ms": switch,
        "switch_speedup": switch["lora"] / switch["s2ft"],
        "switch_speedup_peft": switch["peft_lora"] / switch["s2ft"],
        "throughput": rows,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


# ------------------------------------------------------------------------------- report


def ratio_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (S²FT against its targets; ``peft`` = peft's LoRA, a peer row)."""
    lines = [
        (
            "| setting | switch S²FT (ms) | switch LoRA (ms) | switch peft (ms) | LoRA/S²FT | adapters in batch "
            "| S²FT tok/s | LoRA tok/s | peft tok/s | fused tok/s | S²FT/LoRA | S²FT/peft | S²FT/fused |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results["settings"]:
        ms = s["switch_ms"]
        switch = [s["setting"], f"{ms['s2ft']:.2f}", f"{ms['lora']:.2f}", f"{ms['peft_lora']:.2f}"]
        switch.append(f"{s['switch_speedup']:.1f}×")
        for i, row in enumerate(s["throughput"]):
            tps = row["tokens_per_s"]
            cells = (switch if i == 0 else [""] * len(switch)) + [str(row["adapters"])]
            cells += [f"{tps[k]:.1f}" for k in (*ROWS, "fused")]
            cells += [f"{row[f's2ft_vs_{k}']:.2f}×" for k in ("lora", "peft_lora", "fused")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def docs_section(results: dict[str, Any]) -> str:
    c = results["config"]
    models = "\n".join(
        f"- **{s['setting']}**: {s['model']} on {s['device']}; S²FT adapters: {s['s2ft_adapters']}."
        for s in results["settings"]
    )
    return (
        f"{SECTION}\n\n"
        f"Written by `python -m tools.bench.serve --docs docs/benchmarks.md` from `{c['output']}` "
        f"({results['date']}, torch {results['torch']}). Targets: {SERVE_TARGETS}.\n\n"
        f"{models}\n"
        f"- Batch of {c['batch_size']} requests, {c['prompt_tokens']} prompt tokens, {c['new_tokens']} new tokens "
        f"(greedy, KV cache, prefill included), requests spread round-robin over the distinct adapters; "
        f"median of {c['repeats']} runs after a warm-up, all variants timed in turn (round-robin) so that other "
        f"load on the machine falls on each alike. LoRA: ftzoo's plugin, rank {c['lora_rank']} on "
        f"{', '.join(LORA_TARGETS)}, served and switched like S²FT; peft: the same LoRA in peft's own "
        "`adapter_names=` mixed batches and `merge_adapter`/`unmerge_adapter` (a peer row). Switch: median over "
        f"{c['switch_adapters']} adapters × {c['repeats']} passes. Fused: the base with one S²FT adapter fused.\n\n"
        f"{ratio_table(results)}\n"
        + (
            ""
            if any(s["setting"] == "gpu" for s in results["settings"])
            else "\nNo GPU was present for this run, so the Llama-2-7B-shaped setting is missing: run the same "
            "command on a GPU machine to add it.\n"
        )
    )


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) the Serving section of ``path``; other sections stay as they are."""
    replace_docs_section(path, SECTION, section)


def bench_serve(
    output: str | None = None,
    docs: str | None = None,
    adapter_counts: list[int] = [8, 32],  # noqa: B006 (jsonargparse shows the default)
    batch_size: int = 32,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    repeats: int = 3,
    switch_adapters: int = 8,
    lora_rank: int = 32,
    real_model: bool = False,
    gpu: bool = True,
    gpu_layers: int = 4,
    threads: int | None = None,
    seed: int = 0,
    http: bool = False,
    base_model: str = "smollm2-135m",
    clients: list[int] = [1, 8, 32, 64],  # noqa: B006 (jsonargparse shows the default)
    http_adapters: int = 16,
    rounds: int = 3,
    max_tokens: int = 32,
) -> dict[str, Any]:
    """Benchmark switching and mixed-adapter decoding: S²FT vs LoRA vs fused; or, with
    ``--http true``, the HTTP server under load (:mod:`tools.bench.serve_http`).

    Args:
        output: JSON file of the results (default ``bench_results/serve.json``, with
            ``--http true`` ``bench_results/serve_http.json``).
        docs: Markdown file whose "Serving" section (with ``--http true``: "Serving over HTTP")
            is rewritten from the results.
        adapter_counts: distinct adapters in the batch, one measurement each.
        batch_size: requests per batch (at least the largest adapter count).
        prompt_tokens: prompt length of every request.
        new_tokens: tokens generated per request.
        repeats: timed runs per measurement (the median is reported).
        switch_adapters: adapters cycled through when timing switches.
        lora_rank: LoRA rank.
        real_model: CPU: the real SmolLM2-135M-Instruct instead of random weights of its shape.
        gpu: also run the Llama-2-7B-shaped setting when a GPU is present.
        gpu_layers: decoder layers of the Llama-2-7B-shaped model.
        threads: CPU threads for torch (default: torch's choice). On a machine shared with
            other jobs, 1 thread gives steadier timings: small ops with several threads stall
            when the cores are oversubscribed.
        seed: seed of weights, adapters and prompts.
        http: run the HTTP load test instead: concurrent ``openai`` clients against the
            server batching continuously and against it decoding one request at a time.
        base_model: HTTP: the base model served (alias, folder or ``.gguf``).
        clients: HTTP: the numbers of concurrent clients, one measurement each.
        http_adapters: HTTP: adapters served (in turn S²FT, LoRA and DoRA of rank ``lora_rank``, sparse).
        rounds: HTTP: requests each client sends, one after the other.
        max_tokens: HTTP: the most tokens of an answer. ``threads``: torch threads per server.

    Returns:
        The results written to ``output``.
    """
    if http:
        from tools.bench.serve_http import bench_http

        return bench_http(
            output or "bench_results/serve_http.json",
            docs,
            base_model,
            http_adapters,
            clients,
            rounds,
            max_tokens,
            lora_rank,
            threads,
            seed=seed,
        )
    output = output or "bench_results/serve.json"
    if batch_size < max(adapter_counts):
        raise ValueError(f"batch_size {batch_size} cannot hold {max(adapter_counts)} distinct adapters")
    http_only = ("http", "base_model", "clients", "http_adapters", "rounds", "max_tokens")
    config = {k: v for k, v in locals().items() if k not in http_only}
    if threads is not None:
        torch.set_num_threads(threads)
    results = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": config,
        "settings": [],
    }
    for setting in settings(real_model, gpu_layers, gpu):
        args = (adapter_counts, batch_size, prompt_tokens, new_tokens, repeats, switch_adapters, lora_rank, seed)
        results["settings"].append(bench_setting(setting, *args))
        if setting.device.type == "cuda":
            torch.cuda.empty_cache()
    with atomic_file(output) as handle:
        json.dump(results, handle, indent=2)
    print("\n" + ratio_table(results))
    if docs:
        update_docs(Path(docs), docs_section(results))
    return results


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(bench_serve, as_positional=False)
