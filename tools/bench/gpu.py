"""The GPU run, in one command: training and serving at Llama-2-7B shape beside the official
S²FT code's published numbers.

Training (random bf16 weights, Llama-2-7B shape, ``layers`` blocks, seq × batch of
``seq_len`` × ``batch_size``): each row of :data:`TRAIN_METHODS`, one at a time on the GPU
(one model in memory at a time), prepared as ``lightning fit`` prepares it
(:func:`tools.bench.train.prepare_row`), and

* its exact byte count (:func:`tools.bench.measure.count_memory`: weights, gradients, AdamW
  state and what autograd saves for backward);
* ``torch.cuda.max_memory_allocated`` over two real steps (:func:`tools.bench.measure.cuda_peak`),
  the number comparable to the official code's;
* its step time: the median of ``steps`` steps after ``warmup``, forward, backward and AdamW
  each timed with CUDA events (:class:`tools.bench.measure.StepTimer`).

AdamW is PyTorch's fused kernel on the GPU (:func:`tools.bench.measure.adamw`; the default
foreach kernels' temporaries would add up to a model's size to full fine-tuning's peak).

Serving (the same shape at ``serve_layers`` blocks): switch latency and mixed-adapter
throughput of S²FT, ftzoo's LoRA, raw peft's LoRA and a fused model
(:func:`tools.bench.serve.bench_setting`).

Both tables go into the section :data:`SECTION` of ``docs/benchmarks.md`` (the other sections
stay as they are), with the official anchors (:data:`OFFICIAL_H100`) beside the rows they
correspond to; the results also go to ``output`` (JSON). On a lent device::

    python -m tools.bench.gpu                    # about 3-5 minutes on an H100 (80 GB)

``--tiny true --device cpu`` runs the same plumbing at a tiny shape on a CPU in seconds (the
CI test does, into a scratch copy of the docs).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from tools.bench.measure import StepTimer, count_memory, cuda_peak
from tools.bench.serve import Setting, bench_setting, ratio_table
from tools.bench.shapes import LLAMA2_7B, llama_config, replace_docs_section
from tools.bench.train import MethodName, _environment, build_model, make_batch, prepare_row
from zoo.outputs import atomic_file

SECTION = "## Training and serving on a GPU"
TRAIN_METHODS: tuple[MethodName, ...] = ("full", "lora", "dora", "s2ft", "peft_lora", "peft_dora", "frozen")
OFFICIAL_H100 = {"full": (62.8, 295), "lora": (26.8, 176), "s2ft": (23.4, 151)}
"""The official S²FT code's published numbers (GiB, ms per step) on an H100 for Llama-2-7B,
seq 1024 × batch 2 (all 32 layers): our ``full``, ``lora`` and ``s2ft`` rows at that shape
stand beside them."""
OFFICIAL_SHAPE = (32, 1024, 2)
"""(layers, seq, batch) of :data:`OFFICIAL_H100`."""
TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 512,
}
"""A Llama-2-shaped toy (multi-head attention, head_dim 8) for checking the plumbing on a CPU."""
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build weights directly in ``dtype`` (a 7B model is not first made in float32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def train_row(
    method: MethodName,
    shape: dict[str, Any],
    layers: int,
    seq_len: int,
    batch_size: int,
    dtype: torch.dtype,
    device: str,
    steps: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """One method at one shape: counted bytes, CUDA peak and step time (``oom`` if it does not fit)."""
    row: dict[str, Any] = {"method": method, "layers": layers, "seq_len": seq_len, "batch_size": batch_size}
    model = timer = None
    try:
        with default_dtype(dtype):
            model = build_model(shape, layers, dtype, device, seed)
        model, trainable, what = prepare_row(method, model, seed, lora_rank=32, lora_dropout=0.05)
        row |= {"what": what, "trainable": sum(p.numel() for p in trainable)}
        batch = make_batch(shape["vocab_size"], batch_size, seq_len, device, seed)
        row["bytes"] = count_memory(model, trainable, batch)
        if device == "cuda":
            row["cuda_max_allocated"] = cuda_peak(model, trainable, batch)
        for p in trainable:
            p.grad = None
        timer = StepTimer(model, trainable, device)
        for i in range(warmup + steps):
            timer.step(batch, record=i >= warmup)
        row["time"] = {k: v for k, v in timer.medians().items() if k != "steps"}
    except torch.OutOfMemoryError:
        row["oom"] = True
    finally:
        del model, timer
        release(device)
    return row


def bench_gpu(
    docs: str | None = "docs/benchmarks.md",
    output: str = "bench_results/gpu.json",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    layers: tuple[int, ...] = (4, 32),
    seq_len: int = 1024,
    batch_size: int = 2,
    methods: tuple[MethodName, ...] = TRAIN_METHODS,
    steps: int = 5,
    warmup: int = 2,
    serve: bool = True,
    serve_layers: int = 4,
    adapter_counts: tuple[int, ...] = (8, 32),
    serve_batch_size: int = 32,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    repeats: int = 3,
    tiny: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the training and serving benchmarks at Llama-2-7B shape and write the GPU section.

    Args:
        docs: Markdown file whose section :data:`SECTION` is rewritten (``None``: JSON only).
        output: JSON file of the results.
        device: ``cuda`` (``auto``: cuda if present); ``cpu`` only with ``tiny`` (the plumbing).
        layers: decoder blocks of the training rows (32 = the whole model).
        seq_len: tokens per sequence of the training step.
        batch_size: sequences per training step.
        methods: training rows (:mod:`tools.bench.train`'s names).
        steps: timed training steps (median reported).
        warmup: untimed training steps first.
        serve: also run the serving benchmark.
        serve_layers: decoder blocks of the serving model.
        adapter_counts: distinct adapters in a served batch, one measurement each.
        serve_batch_size: requests per served batch.
        prompt_tokens: prompt tokens per request.
        new_tokens: generated tokens per request.
        repeats: timed serving runs per measurement (median reported).
        tiny: a toy shape (:data:`TINY`) instead of Llama-2-7B's, for checking the plumbing.
        seed: seed of weights, batches and selections.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not tiny:
        raise ValueError("the GPU run at Llama-2-7B shape needs a GPU; use --tiny true to check its plumbing on a CPU")
    shape = TINY if tiny else LLAMA2_7B
    dtype = torch.bfloat16
    start = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "environment": _environment(device),
        "shape": "tiny" if tiny else "llama2-7b",
        "dtype": "bfloat16",
        "train": [],
    }
    for n in layers:
        for method in methods:
            row = train_row(method, shape, n, seq_len, batch_size, dtype, device, steps, warmup, seed)
            results["train"].append(row)
            print(_train_line(row), flush=True)
    results["seconds"] = time.perf_counter() - start
    write(results, Path(output), docs)  # the training rows are kept even if serving fails
    if serve:
        config = llama_config(shape, serve_layers, **TOKEN_IDS)
        name = "tiny" if tiny else f"Llama-2-7B shape ({serve_layers} of 32 layers)"
        setting = Setting("gpu" if device == "cuda" else "cpu", f"{name}, random bf16 weights", torch.device(device),
                          dtype, config)  # fmt: skip
        with default_dtype(dtype):
            results["serve"] = bench_setting(
                setting, list(adapter_counts), serve_batch_size, prompt_tokens, new_tokens, repeats,
                min(8, max(adapter_counts)), 32, seed,
            )  # fmt: skip
        release(device)
        results["seconds"] = time.perf_counter() - start
        write(results, Path(output), docs)
    print("\n" + docs_section(results, Path(output)) + f"\nwritten to {output}" + (f" and {docs}" if docs else ""))
    return results


def write(results: dict[str, Any], path: Path, docs: str | None) -> None:
    """The JSON results, and the section of ``docs`` (atomically, the other sections as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(json.dumps(results, indent=2) + "\n")
    if docs:
        replace_docs_section(Path(docs), SECTION, docs_section(results, path))


def _train_line(row: dict[str, Any]) -> str:
    if row.get("oom"):
        return f"{row['method']} at {row['layers']} layers: out of memory"
    peak = row.get("cuda_max_allocated")
    peak_text = f", peak {peak / 2**30:.2f} GiB" if peak else ""
    return (
        f"{row['method']} at {row['layers']} layers: counted {row['bytes']['total'] / 2**30:.2f} GiB{peak_text}, "
        f"step {row['time']['step'] * 1000:.1f} ms"
    )


def train_table(results: dict[str, Any]) -> list[str]:
    """One line per training row, the official anchors beside ``full``, ``lora`` and ``s2ft`` at their shape."""
    columns = [
        "layers", "seq × batch", "method", "trainable", "counted (GiB)", "CUDA peak (GiB)", "forward (ms)",
        "backward (ms)", "AdamW (ms)", "step (ms)", "peak vs best LoRA", "step vs best LoRA", "official (GiB / ms)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows = results["train"]
    for row in rows:
        shape = (row["layers"], row["seq_len"], row["batch_size"])
        cells = [row["layers"], f"{row['seq_len']} × {row['batch_size']}", row["method"]]
        if row.get("oom"):
            lines.append("| " + " | ".join(map(str, cells + ["out of memory"] + ["-"] * (len(columns) - 4))) + " |")
            continue
        peers = [r for r in rows if (r["layers"], r["seq_len"], r["batch_size"]) == shape and not r.get("oom")]
        loras = [r for r in peers if r["method"] in ("lora", "peft_lora")]
        peak = row.get("cuda_max_allocated")
        t = row["time"]
        cells += [f"{row['trainable']:,}", f"{row['bytes']['total'] / 2**30:.2f}", f"{peak / 2**30:.2f}" if peak else "-"]
        cells += [f"{t[k] * 1000:.1f}" for k in ("forward", "backward", "optimizer", "step")]
        lora_peaks = [r["cuda_max_allocated"] for r in loras if r.get("cuda_max_allocated")]
        cells.append(f"{peak / min(lora_peaks):.3f}" if peak and lora_peaks else "-")
        cells.append(f"{t['step'] / min(r['time']['step'] for r in loras):.3f}" if loras else "-")
        anchor = OFFICIAL_H100.get(row["method"]) if shape == OFFICIAL_SHAPE else None
        cells.append(f"{anchor[0]} / {anchor[1]}" if anchor else "-")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def docs_section(results: dict[str, Any], path: Path) -> str:
    env = results["environment"]
    where = env.get("gpu") or f"{env['processor']} ({env['threads']} threads)"
    lines = [
        SECTION,
        "",
        (f"Written by `python -m tools.bench.gpu` (results in `{path}`; {results['date']}, {where}, torch "
        f"{env['torch']}, transformers {env.get('transformers')}, peft {env.get('peft')}; "
        f"{results['seconds'] / 60:.1f} minutes). How it is measured: the module docstring of `tools/bench/gpu.py`."),
        "",
        (f"Training at {'a tiny' if results['shape'] == 'tiny' else 'Llama-2-7B'} shape, random bf16 weights. "
        "`counted`: exact bytes of weights, gradients, AdamW state and saved activations; `CUDA peak`: "
        "`torch.cuda.max_memory_allocated` over two real steps. Official: the S²FT authors' code on an H100 "
        "(Llama-2-7B, 1024 × 2), beside our rows at that shape."),
        "",
        *train_table(results),
    ]
    if "serve" in results:
        s = results["serve"]
        lines += [
            "",
            (f"Serving: {s['model']} on {s['device']}; S²FT adapters: {s['s2ft_adapters']}. Switch: adapter switch "
            "latency; tok/s: greedy decoding of one batch whose requests use that many distinct adapters "
            "(`tools/bench/serve.py`)."),
            "",
            ratio_table({"settings": [s]}),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    CLI(bench_gpu, args=argv)


if __name__ == "__main__":
    main()
