"""Training-step memory and time of full fine-tuning, LoRA, S²FT and a frozen floor, side by side.

Rows (each on a fresh copy of the same random model). Every method row is the method's
plugin, prepared by :func:`zoo.prepare.prepare` as ``lightning fit`` prepares it, with the
configs of :func:`tools.bench.shapes.method_configs`:

* ``full``: every parameter trains.
* ``lora``: ftzoo's LoRA, r=32 (alpha 64, dropout 0.05) on q, k, v, up, down as in
  LLM-Adapters and the S²FT paper's baselines (adapters in the model's dtype, the default).
* ``lora_d0``: the same without dropout, LoRA's cheapest setting (dropout keeps a masked
  copy of each adapted layer's input for backward).
* ``lora_fp32``: ``lora`` with ``adapter_dtype="float32"``: what float32 master values of the
  adapters cost on a bf16 model (2× the adapter bytes, a float32 copy of each adapted input).
* ``dora``: ftzoo's DoRA with LoRA's settings.
* ``dora_fp32``: ``dora`` with float32 adapters. (With dropout, raw peft's DoRA then recomputes
  the base output as ``F.linear(x, W.to(float32))``, a float32 copy of each adapted weight kept
  for backward; ftzoo's runs that matmul in the base's dtype and keeps no such copy:
  :class:`plugins.lora.model.BaseDtypeDoraLayer`.)
* ``sparse``: ftzoo's sparse masks, 1 % of every projection's entries, random.
* ``s2ft``: ftzoo's S²FT with its defaults, the paper's recipe (O heads 5.2 %, down channels
  2 %, random, spread over all layers); the exact number of trained values is printed.
* ``peft_lora``: a peer row: the ``peft`` library's own ``get_peft_model`` with LoRA's
  settings and adapters in the model's dtype (bf16 adapters on a bf16 model).
* ``peft_dora``: the same peer for DoRA (``use_dora=True``).
* ``frozen``: the floor: every weight frozen except the first block's input norm, so the
  backward pass still runs through every block but computes no weight gradient.
* ``s2ft_nf4``, ``qlora``, ``qlora_d0``, ``frozen_nf4``: the rows ``s2ft``, ``lora``,
  ``lora_d0`` and ``frozen`` on the same base quantized to NF4 by :func:`zoo.quantization.quantize`
  (bitsandbytes ``Linear4bit``, blocks of 64 with quantized block scales, every linear layer but
  the output head; matmuls in the model's dtype). ``qlora`` is QLoRA as peft does it: ftzoo's
  LoRA plugin, i.e. peft's LoRA layers wrapping the bitsandbytes layers, adapters in the compute dtype.
  The NF4 weights' bytes include the block scales and code books (``quant_state``), which are
  not parameters.

Memory is *counted*, exactly, at the real Llama-2-7B layer shapes (hidden 4096,
intermediate 11008, 32 heads, vocabulary 32000) with a few layers in bf16, built on the
``meta`` device so no weight is allocated: bytes of parameters and buffers, gradients and
AdamW state, plus the bytes autograd saves for backward (a ``saved_tensors_hooks`` that
counts each storage once, so views of one tensor count once, counts only what the graph
still holds when the forward pass returns, and leaves out the weights themselves:
:class:`tools.bench.measure.SavedForBackward`). Their sum is the step's footprint; the real peak can only be lower (the
gradients grow while the saved activations are freed). Attention is the fused kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``: it saves q, k, v, the output and
the log-sum-exp, like flash attention on a GPU), registered as a transformers attention
function so the meta run and the CPU run use the same op.

Time is *measured* at a smaller width (SmolLM2-135M's shape: 30 layers, hidden 576,
9 query / 3 kv heads, intermediate 1536, vocabulary 49152, random weights, fp32): the
median over ``steps`` of forward, backward and ``AdamW.step`` (each timed, every step),
after ``warmup`` steps. With ``device=cuda`` the memory runs on the GPU with real weights
and also reports ``torch.cuda.max_memory_allocated``; times use CUDA events.

Usage::

    python -m tools.bench.train                       # CPU; writes docs/bench/train_cpu.json
    python -m tools.bench.train --device cuda --output docs/bench/train_cuda.json
    python -m tools.bench.train --methods '[s2ft, frozen, s2ft_nf4, qlora, qlora_d0, frozen_nf4]' \\
        --output nf4.json --docs my_notes.md --section '## NF4 only'   # some rows, into a section of their own
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AttentionInterface

from tools.bench.measure import StepTimer, count_memory, cuda_peak
from tools.bench.shapes import (
    LLAMA2_7B,
    LORA_TARGETS,
    SMOLLM2_135M,
    TRAIN_TARGETS,
    llama_config,
    method_configs,
    random_llama,
    replace_docs_section,
)
from zoo.outputs import atomic_file
from zoo.plugins import method_class
from zoo.prepare import prepare
from zoo.quantization import quantize

REPO = Path(__file__).resolve().parents[2]

MethodName = Literal[
    "full", "lora", "lora_d0", "lora_fp32", "dora", "dora_fp32", "sparse", "s2ft", "peft_lora", "peft_dora", "frozen",
    "s2ft_nf4", "qlora", "qlora_d0", "frozen_nf4",
]
METHODS: tuple[MethodName, ...] = (
    "full", "lora", "lora_d0", "lora_fp32", "dora", "dora_fp32", "sparse", "s2ft", "peft_lora", "peft_dora", "frozen",
    "s2ft_nf4", "qlora", "qlora_d0", "frozen_nf4",
)  # fmt: skip
PEER_ROWS = {"peft_lora": False, "peft_dora": True}
"""Raw peft rows → ``use_dora``."""
QUANTIZED_ROWS = {"s2ft_nf4": "s2ft", "qlora": "lora", "qlora_d0": "lora_d0", "frozen_nf4": "frozen"}
"""Row on an NF4 base → the row it repeats."""
TIME_METHODS: tuple[MethodName, ...] = tuple(m for m in METHODS if m not in ("qlora_d0", "lora_fp32", "dora_fp32"))
"""Timed by default: every row but ``qlora_d0`` (whose dropout-free saving is a memory question)
and the float32-adapter rows (the timed model is float32, where they equal ``lora`` and ``dora``)."""
SPARSE_MAX_MEMORY_LAYERS = 2
"""The sparse row's selection holds the indices of 1% of every matrix on the CPU even for the
meta-device count; at 32 Llama-2-7B layers that exceeds a 24 GiB machine, so it is counted at
2 layers only."""

FUSED_ATTENTION = "ftzoo_fused_sdpa"


def fused_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention with the fused CPU kernel (works on ``meta`` too); no padding."""
    group = query.shape[1] // key.shape[1]
    if group > 1:  # [b, kv, s, d] → [b, h, s, d]
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout, True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # [b, s, h, d]


AttentionInterface.register(FUSED_ATTENTION, fused_attention)


def build_model(shape: dict[str, Any], layers: int, dtype: torch.dtype, device: str, seed: int) -> nn.Module:
    """A random Llama of ``shape`` with ``layers`` blocks, every parameter frozen."""
    config = llama_config(shape, layers)
    config._attn_implementation = "sdpa" if device == "cuda" else FUSED_ATTENTION
    return random_llama(config, dtype, device, seed)


def prepare_row(
    row: MethodName, model: nn.Module, seed: int, lora_rank: int, lora_dropout: float
) -> tuple[nn.Module, list[nn.Parameter], str]:
    """Make the row's parameters trainable; return (model, trainable, description)."""
    if row in QUANTIZED_ROWS:
        model, trainable, what = prepare_row(QUANTIZED_ROWS[row], quantize(model, "nf4"), seed, lora_rank, lora_dropout)
        return model, trainable, f"{what}, NF4 base"
    if row == "frozen":
        norm = model.model.layers[0].input_layernorm.weight.requires_grad_(True)
        return model, [norm], "first input norm only"
    if row in PEER_ROWS:
        return _peft_lora(model, lora_rank, lora_dropout, use_dora=PEER_ROWS[row])
    name, config = method_configs(lora_rank, lora_dropout)[row]
    method = method_class(name)(**config)
    prepared = prepare(model, method, calibration_batches=None, seed=seed)
    return prepared.model, [p for _, p in prepared.trainable], repr(method)


def _peft_lora(
    model: nn.Module, lora_rank: int, lora_dropout: float, use_dora: bool = False
) -> tuple[nn.Module, list[nn.Parameter], str]:
    """The peer rows: peft's ``get_peft_model``, adapters in the model's dtype."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_rank,
        lora_alpha=2 * lora_rank,
        lora_dropout=lora_dropout,
        target_modules=LORA_TARGETS,
        bias="none",
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config, autocast_adapter_dtype=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    what = f"peft LoraConfig(r={lora_rank}, dropout={lora_dropout}, use_dora={use_dora}) on {','.join(LORA_TARGETS)}"
    return model, trainable, what


def make_batch(vocab: int, batch: int, seq: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def bench_train(
    output: str | None = None,
    docs: str | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    methods: tuple[MethodName, ...] = METHODS,
    time_methods: tuple[MethodName, ...] | None = TIME_METHODS,
    memory_layers: tuple[int, ...] = (2, 32),
    seq_lens: tuple[int, ...] = (512, 1024),
    batch_sizes: tuple[int, ...] = (1, 2),
    time_layers: int = 30,
    time_seq_len: int = 256,
    time_batch_size: int = 4,
    steps: int = 9,
    warmup: int = 1,
    lora_rank: int = 32,
    lora_dropout: float = 0.05,
    seed: int = 0,
    quiet: bool = False,
    section: str = "## Training",
) -> dict[str, Any]:
    """Measure memory and step time of each method; write JSON and print ratio tables.

    Args:
        output: JSON file to write (default ``docs/bench/train_<device>.json``).
        docs: Markdown file whose "Training" section is rewritten from the results
            (e.g. ``docs/benchmarks.md``); other sections stay as they are.
        device: ``cpu``; ``cuda`` also measures the real peak; ``auto`` picks cuda if present.
        methods: which methods to run (ratios need ``full``, ``s2ft`` and ``frozen``).
        time_methods: which of ``methods`` to time (default: the float rows); ``None``: all.
        memory_layers: decoder blocks of the Llama-2-7B-shaped model for memory (32 = the whole model).
        seq_lens: sequence lengths for memory.
        batch_sizes: batch sizes for memory.
        time_layers: decoder blocks of the SmolLM2-135M-shaped model for timing.
        time_seq_len: sequence length for timing.
        time_batch_size: batch size for timing.
        steps: timed steps (the median is reported).
        warmup: untimed steps first.
        lora_rank: LoRA rank (alpha = 2 × rank).
        lora_dropout: dropout of ``lora`` (LLM-Adapters: 0.05); ``lora_d0`` has none.
        seed: seed of the weights, batches and S²FT's random selection.
        quiet: do not print the tables.
        section: the Markdown heading of the section of ``docs`` to rewrite (another heading
            keeps the Training section as it is, e.g. ``"## NF4 only"`` for a run of some rows).

    Returns:
        The results written to ``output``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {
        "command": "python -m tools.bench.train " + " ".join(sys.argv[1:]) if __name__ == "__main__" else None,
        "environment": _environment(device),
        "settings": {
            "memory_shape": "llama2-7b",
            "memory_layers": memory_layers,
            "memory_dtype": "bfloat16",
            "time_shape": "smollm2-135m",
            "time_layers": time_layers,
            "time_dtype": "float32",
            "time_seq_len": time_seq_len,
            "time_batch_size": time_batch_size,
            "steps": steps,
            "warmup": warmup,
            "lora_rank": lora_rank,
            "lora_dropout": lora_dropout,
            "seed": seed,
        },
        "trainable": {},
        "memory": [],
    }
    mem_device = "cuda" if device == "cuda" else "meta"
    for layers in memory_layers:
        for seq in seq_lens:
            for batch_size in batch_sizes:
                row: dict[str, Any] = {"layers": layers, "seq_len": seq, "batch_size": batch_size, "bytes": {}}
                for method in methods:
                    if method == "sparse" and layers > SPARSE_MAX_MEMORY_LAYERS:
                        continue
                    model = build_model(LLAMA2_7B, layers, torch.bfloat16, mem_device, seed)
                    model, trainable, what = prepare_row(method, model, seed, lora_rank, lora_dropout)
                    count = {"parameters": sum(p.numel() for p in trainable), "what": what}
                    results["trainable"].setdefault(f"memory_{layers}_layers", {})[method] = count
                    batch = make_batch(LLAMA2_7B["vocab_size"], batch_size, seq, mem_device, seed)
                    row["bytes"][method] = count_memory(model, trainable, batch)
                    if device == "cuda":
                        row["bytes"][method]["cuda_max_allocated"] = cuda_peak(model, trainable, batch)
                    del model, trainable
                results["memory"].append(row)
    timed = tuple(m for m in methods if time_methods is None or m in time_methods)
    results["time"] = {} if not timed else _time_methods(
        timed,
        device,
        time_layers,
        time_seq_len,
        time_batch_size,
        steps,
        warmup,
        lora_rank,
        lora_dropout,
        seed,
        results["trainable"],
    )
    results["environment"]["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["ratios"] = ratios(results)
    path = Path(output or REPO / "docs" / "bench" / f"train_{device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(json.dumps(results, indent=2) + "\n")
    if docs:
        update_docs(Path(docs), docs_section(results, path, section), section)
    if not quiet:
        print(format_tables(results))
        print(f"\nwritten to {path}")
    return results


def _time_methods(
    methods: tuple[MethodName, ...],
    device: str,
    layers: int,
    seq: int,
    batch_size: int,
    steps: int,
    warmup: int,
    lora_rank: int,
    lora_dropout: float,
    seed: int,
    trainable_info: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Time the methods round-robin, one step of each in turn, so that a busy machine slows
    them alike (every step is timed; medians are compared)."""
    base = build_model(SMOLLM2_135M, layers, torch.float32, device, seed)
    batch = make_batch(SMOLLM2_135M["vocab_size"], batch_size, seq, device, seed)
    timers = {}
    for method in methods:
        model, trainable, what = prepare_row(method, copy.deepcopy(base), seed, lora_rank, lora_dropout)
        trainable_info.setdefault("time", {})[method] = {"parameters": sum(p.numel() for p in trainable), "what": what}
        timers[method] = StepTimer(model, trainable, device)
    del base
    for i in range(warmup + steps):
        for timer in timers.values():
            timer.step(batch, record=i >= warmup)
    return {method: timer.medians() for method, timer in timers.items()}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """S²FT against full, LoRA and the frozen floor (memory per shape, and time).

    Memory ratios are of the totals; ``beyond_base_weights`` compares what each method adds
    to the frozen base weights that all of them hold (its own weights, gradients, optimizer
    state and saved activations)."""
    out: dict[str, Any] = {"memory": [], "time": {}}
    for row in results["memory"]:
        total = {m: b["total"] for m, b in row["bytes"].items()}
        bases = {q: min(b["weights"] for m, b in row["bytes"].items() if (m in QUANTIZED_ROWS) == q) for q in (False, True)
                 if any((m in QUANTIZED_ROWS) == q for m in row["bytes"])}  # the frozen base's own weights (bf16, NF4)
        beyond = {m: t - bases[m in QUANTIZED_ROWS] for m, t in total.items()}
        shape = {k: row[k] for k in ("layers", "seq_len", "batch_size")}
        out["memory"].append({**shape, **_relative(total), "beyond_base_weights": _relative(beyond)})
    step = {m: t["step"] for m, t in results["time"].items()}
    out["time"] = _relative(step)
    return out


def _relative(values: dict[str, float]) -> dict[str, float]:
    """``"s2ft/full"``-style ratios of S²FT and of the frozen floor to every other method, and
    of S²FT-nf4 and the NF4 floor to the NF4 rows and to their float counterparts."""
    pairs = [(m, o) for m in ("s2ft", "frozen") for o in REFERENCES]
    pairs += [(m, o) for m in ("s2ft_nf4", "frozen_nf4") for o in (*QUANTIZED_REFERENCES, "s2ft", "frozen")]
    pairs += [("lora", "peft_lora"), ("dora", "peft_dora"), ("lora_fp32", "lora"), ("dora_fp32", "dora")]
    out = {f"{m}/{o}": values[m] / values[o] for m, o in pairs if m in values and o in values and o != m}
    loras = [values[m] for m in ("lora", "peft_lora") if m in values]
    for m in ("s2ft", "frozen"):
        if m in values and loras:
            out[f"{m}/best_lora"] = values[m] / min(loras)
    return out


TARGETS = TRAIN_TARGETS


REFERENCES = ("full", "lora", "lora_d0", "peft_lora", "frozen")
"""The methods every row is compared with (the ``vs …`` columns)."""
QUANTIZED_REFERENCES = ("qlora", "qlora_d0", "frozen_nf4")
"""The NF4 rows every row is compared with, in the NF4 table."""


def format_tables(results: dict[str, Any]) -> str:
    """Markdown tables of memory (GiB), time (s) and the targets."""
    return "\n".join(_memory_table(results) + [""] + _time_table(results) + [""] + _target_table(results))


def _memory_table(results: dict[str, Any]) -> list[str]:
    """The float rows, then the NF4 rows with S²FT and the floor in bf16 beside them."""
    float_rows = [m for m in METHODS if m not in QUANTIZED_ROWS]
    lines = _memory_rows(results, "Memory at Llama-2-7B shapes, bf16 (GiB)", float_rows, REFERENCES, "lora")
    nf4_rows = [*QUANTIZED_ROWS, "s2ft", "frozen"]
    title = "Memory on an NF4 base (bitsandbytes, compute in bf16) at Llama-2-7B shapes, bf16 rows beside (GiB)"
    nf4 = _memory_rows(results, title, nf4_rows, (*QUANTIZED_REFERENCES, "s2ft", "frozen"), "qlora")
    return lines + ([""] + nf4 if len(nf4) > 4 else [])


def _memory_rows(
    results: dict[str, Any], title: str, methods: list[str], references: tuple[str, ...], added_vs: str
) -> list[str]:
    gib = 2**30
    rows = results["memory"]
    cuda = any("cuda_max_allocated" in b for row in rows for b in row["bytes"].values())
    columns = ["layers", "seq × batch", "method", "weights", "grads", "AdamW", "activations", "total"]
    columns += [f"vs {m}" for m in references] + [f"added vs {added_vs}"] + (["cuda peak"] if cuda else [])
    lines = [title, "", _row(columns), _row(["---"] * len(columns))]
    for row in rows:
        b = row["bytes"]
        for m in [m for m in methods if m in b]:
            base = min(v["weights"] for k, v in b.items() if (k in QUANTIZED_ROWS) == (m in QUANTIZED_ROWS))
            parts = ("weights", "gradients", "optimizer", "activations", "total")
            cells = [row["layers"], f"{row['seq_len']} × {row['batch_size']}", m] + [
                f"{b[m][k] / gib:.3f}" for k in parts
            ]
            cells += [_ratio(b[m]["total"], b.get(o, {}).get("total")) for o in references]
            comparable = added_vs in b and (m in QUANTIZED_ROWS) == (added_vs in QUANTIZED_ROWS)  # the same base
            cells.append(_ratio(b[m]["total"] - base, b[added_vs]["total"] - base) if comparable else "-")
            if cuda:
                peak = b[m].get("cuda_max_allocated")
                cells.append(f"{peak / gib:.3f}" if peak else "OOM")
            lines.append(_row(cells))
    return lines


RERUN_COMMAND = "python -m tools.bench.train --docs docs/benchmarks.md"
"""The whole Training section in one run: exact memory counts and step times together."""


def _time_table(results: dict[str, Any]) -> list[str]:
    if not results["time"]:
        note = (
            "Step times were not measured in this run (`--time_methods '[]'`): the machine's cores were busy "
            "with other jobs, and times taken under that load would say more about the load than about the "
            f"methods. On quiet cores, `{RERUN_COMMAND}` rewrites this section with both (the memory counts "
            "are exact and come out the same)."
        )
        return [note]
    s, t, info = results["settings"], results["time"], results["trainable"]["time"]
    title = (
        f"Step time at SmolLM2-135M shape, {s['time_layers']} layers, fp32, seq {s['time_seq_len']} × batch "
        f"{s['time_batch_size']}, median of {s['steps']} steps (s)"
    )
    columns = ["method", "trainable", "forward", "backward", "AdamW", "step", "fastest step"]
    columns += [f"vs {m}" for m in REFERENCES]
    lines = [title, "", _row(columns), _row(["---"] * len(columns))]
    for m in t:
        cells = [m, f"{info[m]['parameters']:,}"]
        cells += [f"{t[m][k]:.3f}" for k in ("forward", "backward", "optimizer", "step", "step_min")]
        cells += [_ratio(t[m]["step"], t.get(o, {}).get("step")) for o in REFERENCES]
        lines.append(_row(cells))
    return lines


def _target_table(results: dict[str, Any]) -> list[str]:
    """Each target at its worst shape, beside the frozen floor's ratio there (the best that
    any method with a full backward pass can reach)."""
    columns = ["target", "ratio (worst shape)", "met", "frozen floor there", "shapes met"]
    lines = [_row(columns), _row(["---"] * len(columns))]
    for kind, key, limit, text in TARGETS:
        rows = results["ratios"]["memory"] if kind == "memory" else [results["ratios"]["time"]]
        rows = [r for r in rows if key in r]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r[key])
        shape = f" at {worst['layers']} layers, {worst['seq_len']} × {worst['batch_size']}" if kind == "memory" else ""
        floor_key = key.replace("s2ft_nf4/", "frozen_nf4/") if "s2ft_nf4/" in key else key.replace("s2ft/", "frozen/")
        floor = f"{worst[floor_key]:.3f}" if floor_key in worst and floor_key != key else "-"
        met = sum(r[key] <= limit for r in rows)
        cells = [text, f"{worst[key]:.3f}{shape}", "yes" if worst[key] <= limit else "NO", floor, f"{met}/{len(rows)}"]
        lines.append(_row(cells))
    s2ft = {name: info["s2ft"] for name, info in results["trainable"].items() if "s2ft" in info}
    if s2ft:
        counts = "; ".join(f"{info['parameters']:,} at {name.replace('_', ' ')}" for name, info in s2ft.items())
        configs = " / ".join(dict.fromkeys(info["what"] for info in s2ft.values()))
        lines += ["", f"S²FT trains exactly {counts} (`{configs}`)."]
    return lines


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


SECTION = "## Training"


def docs_section(results: dict[str, Any], path: Path, section: str = SECTION) -> str:
    """The "Training" section (or ``section``) of ``docs/benchmarks.md``: command, setting and tables."""
    env, command = results["environment"], results.get("command") or "python -m tools.bench.train"
    s = results["settings"]
    where = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    setting = (
        f"Written by `{command}` (results in `{where}`; torch {env['torch']}, transformers "
        f"{env.get('transformers')}, peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}, device {env['device']}, {env['threads']} threads, "
        f"load average {env['load_average_at_start']:.2f} at the start and {env['load_average_at_end']:.2f} at the "
        "end). How each number is measured: the module docstring of `tools/bench/train.py`."
    )
    lines = [section, "", setting, ""]
    if any("sparse" in info for info in results["trainable"].values()) and max(s["memory_layers"]) > 2:
        sparse = (
            "The sparse row (1% of every projection's entries, random) is counted at 2 layers only: its selection "
            "holds the indices on the CPU, which at 32 layers exceeds a 24 GiB machine."
        )
        lines += [sparse, ""]
    lines += format_tables(results).splitlines()
    return "\n".join(lines) + "\n"


def update_docs(path: Path, text: str, section: str = SECTION) -> None:
    """Replace (or append) the section headed ``section`` of ``path``; other sections stay as they are."""
    replace_docs_section(path, section, text)


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.3f}" if reference else "-"


def _environment(device: str) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "?",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    try:
        import peft
        import transformers

        env |= {"transformers": transformers.__version__, "peft": peft.__version__}
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        env["bitsandbytes"] = version("bitsandbytes")
    except ImportError:
        pass
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    CLI(bench_train, args=argv)


if __name__ == "__main__":
    main()
