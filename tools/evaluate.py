"""Evaluate the base model and any number of adapters on the same held-out items, in one run.

The base model is loaded once; each adapter is fused in place, evaluated and unfused again
(:class:`zoo.inference.AdapterSwitcher`), so ten adapters cost one model load. Every entry
answers the same items (``--max_records`` draws a seeded sample per task, the same for all),
greedily with the KV cache, and is scored by the data module's rules (LLM-Adapters' answer
extraction for the reasoning sets). Out: per-task and average accuracy with 95% intervals,
McNemar's paired test between every two entries, each generation, as JSON and Markdown::

    python -m tools.evaluate --adapters '[s2ft=runs/s2ft/adapter, lora=runs/lora/adapter]' \\
        --data configs/data/math_test.yaml --max_records 100 --output runs/eval/math

``--data`` is any ftzoo data module (a YAML file with ``class_path``/``init_args``, or flags
``--data.class_path datamodules.ArithmeticDataModule --data.init_args.prompt_style chat``);
its test split is evaluated and no training file is read.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from datamodules.base import FineTuneDataModule
from datamodules.encode import Example
from zoo.evaluation import Score, generate_answers, macro_average, mcnemar
from zoo.inference import BASE, AdapterSwitcher, load_base, parse_named, pick_device, read_adapter
from zoo.loading import load_tokenizer
from zoo.outputs import atomic_file


def sample_items(examples: list[Example], max_records: int | None, seed: int) -> list[Example]:
    """At most ``max_records`` examples per task: a seeded sample kept in file order, so every
    entry (and every rerun) is scored on the same items."""
    if max_records is None:
        return examples
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_task[example.task].append(i)
    keep: set[int] = set()
    for task, indices in by_task.items():
        keep.update(indices if len(indices) <= max_records else random.Random(f"{seed}:{task}").sample(indices, max_records))
    return [e for i, e in enumerate(examples) if i in keep]


def score_entries(
    items: list[Example], correct: dict[str, list[bool]], tasks: list[str]
) -> dict[str, Any]:
    """Per-task and average accuracy of each entry, and McNemar's test between every two.

    Args:
        items: the evaluated examples (item ``i`` is the same for every entry).
        correct: entry name → per-item correctness.
        tasks: task names in report order.
    """
    scores: dict[str, Any] = {}
    for entry, flags in correct.items():
        per_task = {t: Score(sum(f for f, e in zip(flags, items) if e.task == t), sum(e.task == t for e in items)) for t in tasks}
        scores[entry] = {
            "tasks": {t: s.as_dict() for t, s in per_task.items()},
            "average": macro_average(list(per_task.values())),
            "pooled": Score(sum(flags), len(flags)).as_dict(),
        }
    pairs = []
    for first, second in combinations(correct, 2):
        test = mcnemar(correct[first], correct[second])
        per_task = {
            t: mcnemar(
                [f for f, e in zip(correct[first], items) if e.task == t],
                [f for f, e in zip(correct[second], items) if e.task == t],
            ).as_dict()
            for t in tasks
        }
        pairs.append({"first": first, "second": second, **test.as_dict(), "tasks": per_task})
    return {"scores": scores, "mcnemar": pairs}


def evaluate(
    data: FineTuneDataModule,
    adapters: list[str] | None = None,
    adapters_from: str | None = None,
    base_model: str | None = None,
    include_base: bool = True,
    max_records: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "auto",
    output: str | None = None,
    title: str = "Evaluation",
) -> dict[str, Any]:
    """Evaluate the base model and adapters on the data module's test split.

    Args:
        data: the data module whose test split is evaluated (its tokenizer is set here).
        adapters: adapter folders, as ``path`` or ``name=path``.
        adapters_from: also every adapter a ``tools/compare.py`` run kept (its ``results.json``),
            under its contender name: e.g. math-trained adapters scored on commonsense tests.
        base_model: the base model; default: the one the first adapter records, else ``smollm2-135m``.
        include_base: also evaluate the base model itself (entry ``base``).
        max_records: evaluate at most this many items per task (seeded sample, same for every entry).
        seed: seed of that sample.
        batch_size: prompts generated together.
        max_new_tokens: generation length; default: the data module's.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ...
        output: folder for ``results.json``, ``results.md`` and ``generations.jsonl``.
        title: heading of the Markdown report.

    Returns:
        ``{"entries", "tasks", "items", "scores", "mcnemar", "seconds", ...}`` (also ``results.json``).
    """
    paths = parse_named(adapters or [])
    if adapters_from is not None:
        kept = json.loads(Path(adapters_from).read_text())["chosen"]
        paths.update(parse_named([f"{name}={run['adapter']}" for name, run in kept.items() if name not in paths]))
    if BASE in paths:
        raise ValueError(f"the name {BASE!r} is the base model; name the adapter otherwise")
    loaded = {name: read_adapter(path) for name, path in paths.items()}
    if base_model is None and not loaded:
        base_model = "smollm2-135m"
    model, info = load_base(base_model, loaded, dtype)
    model.to(pick_device(device))
    tokenizer = load_tokenizer(info.name_or_path)
    data.tokenizer = tokenizer
    items = sample_items(data.examples("test"), max_records, seed)
    if not items:
        raise ValueError(f"{type(data).__name__} has no test items to evaluate")
    tasks = list(dict.fromkeys(e.task for e in items))
    switcher = AdapterSwitcher(model, info)
    for name, adapter in loaded.items():
        switcher.add(name, adapter)
    entries = ([BASE] if include_base else []) + list(loaded)
    length = max_new_tokens or data.max_new_tokens

    generations: dict[str, list[str]] = {}
    correct: dict[str, list[bool]] = {}
    seconds: dict[str, float] = {}
    for entry in entries:
        switcher.activate(entry)
        started = time.monotonic()
        prompts = [e.prompt_ids for e in items]
        generations[entry] = generate_answers(model, tokenizer, prompts, length, batch_size, description=entry)
        seconds[entry] = round(time.monotonic() - started, 1)
        correct[entry] = [data.is_correct(e.task, g, e.answer) for e, g in zip(items, generations[entry])]
        print(f"{entry}: {sum(correct[entry])}/{len(items)} correct ({seconds[entry]:.0f} s)", file=sys.stderr)
    switcher.activate(BASE)

    results = {
        "title": title,
        "base_model": info.name_or_path,
        "adapters": paths,
        "entries": entries,
        "tasks": tasks,
        "items": {t: sum(e.task == t for e in items) for t in tasks},
        "max_records": max_records,
        "seed": seed,
        "max_new_tokens": length,
        "prompt_style": getattr(data, "prompt_style", None),
        "seconds": seconds,
        **score_entries(items, correct, tasks),
    }
    if output is not None:
        write_report(results, items, generations, correct, Path(output))
    return results


def write_report(
    results: dict[str, Any],
    items: list[Example],
    generations: dict[str, list[str]],
    correct: dict[str, list[bool]],
    folder: Path,
) -> None:
    """``results.json``, ``results.md`` and ``generations.jsonl`` (one line per entry and item)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "results.json") as handle:
        json.dump(results, handle, indent=2)
    with atomic_file(folder / "results.md") as handle:
        handle.write(markdown_report(results))
    with atomic_file(folder / "generations.jsonl") as handle:
        for entry, texts in generations.items():
            for i, (example, text, ok) in enumerate(zip(items, texts, correct[entry])):
                row = {"entry": entry, "item": i, "task": example.task, "answer": example.answer, "correct": ok}
                handle.write(json.dumps({**row, "generation": text}) + "\n")


def _cell(score: dict[str, float]) -> str:
    return f"{100 * score['accuracy']:.1f} [{100 * score['low']:.1f}, {100 * score['high']:.1f}]"


def markdown_report(results: dict[str, Any], extra_columns: dict[str, dict[str, str]] | None = None) -> str:
    """The accuracy table (per task and average, 95% intervals) and the paired tests, in Markdown.

    Args:
        results: as returned by :func:`evaluate`.
        extra_columns: column title → entry → cell, shown after the entry's name.
    """
    extra_columns = extra_columns or {}
    tasks, scores = results["tasks"], results["scores"]
    head = ["entry", *extra_columns, *(f"{t} (n={results['items'][t]})" for t in tasks), "average"]
    lines = [
        f"### {results['title']}",
        "",
        "Accuracy in % with 95% intervals (Wilson per task; the average is the unweighted mean over tasks).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for entry in results["entries"]:
        cells = [entry, *(col.get(entry, "") for col in extra_columns.values())]
        cells += [_cell(scores[entry]["tasks"][t]) for t in tasks] + [f"**{_cell(scores[entry]['average'])}**"]
        lines.append("| " + " | ".join(cells) + " |")
    if results["mcnemar"]:
        lines += [
            "",
            "Paired McNemar tests on all items (exact; a p-value of 0.05 or more is a tie):",
            "",
            "| first | second | only first right | only second right | p | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for pair in results["mcnemar"]:
            verdict = {"first": f"{pair['first']} better", "second": f"{pair['second']} better", "tie": "tie"}
            lines.append(
                f"| {pair['first']} | {pair['second']} | {pair['only_first']} | {pair['only_second']} "
                f"| {pair['p_value']:.3g} | {verdict[pair['verdict']]} |"
            )
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """A grouped bar chart: accuracy per task and on average, one bar per entry, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*results["tasks"], "average"]
    entries = results["entries"]
    width = 0.8 / len(entries)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(entries)) / 3), 4))
    for k, entry in enumerate(entries):
        score = results["scores"][entry]
        cells = [score["tasks"][t] for t in results["tasks"]] + [score["average"]]
        values = [100 * c["accuracy"] for c in cells]
        errors = [  # clipped at 0: at 0% or 100% the bound equals the value up to rounding
            [max(0.0, 100 * (c["accuracy"] - c["low"])) for c in cells],
            [max(0.0, 100 * (c["high"] - c["accuracy"])) for c in cells],
        ]
        positions = [g + (k - (len(entries) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(positions, values, width, yerr=errors, capsize=2, label=entry)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or results["title"])
    ax.legend(fontsize="small", ncols=min(len(entries), 6))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    from jsonargparse import CLI

    results = CLI(evaluate, as_positional=False)
    print(markdown_report(results))


if __name__ == "__main__":
    main()
