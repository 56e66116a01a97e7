"""Reports of an evaluation: per-entry scores and paired tests, as JSON, Markdown and a chart.

One results dictionary (``entries``, ``tasks``, ``items``, ``scores``, ``mcnemar``, ``title``)
is what every evaluation in ftzoo produces (``tools.evaluate``, ``tools.compare``,
``tools.paired``, the lm-evaluation-harness bridge); the tools only gather outcomes and
call these to score and render them. An evaluation with several metrics (log-likelihood
scoring: ``acc`` and ``acc_norm``) also holds ``metrics``, metric → ``{"scores", "mcnemar"}``;
its ``scores`` and ``mcnemar`` are those of the first metric, which charts and comparisons read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from zoo.evaluation import HasTask, Score, macro_average, mcnemar
from zoo.outputs import atomic_file


def score_entries(
    items: Sequence[HasTask], correct: dict[str, list[bool]], tasks: list[str]
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


def score_metrics(
    items: Sequence[HasTask], outcomes: dict[str, dict[str, list[bool]]], tasks: list[str]
) -> dict[str, Any]:
    """:func:`score_entries` for each metric (metric → entry → per-item correctness): ``metrics``,
    and the first metric's ``scores`` and ``mcnemar`` at the top level."""
    metrics = {metric: score_entries(items, correct, tasks) for metric, correct in outcomes.items()}
    first = next(iter(metrics.values()))
    return {"metric": next(iter(metrics)), "metrics": metrics, "scores": first["scores"], "mcnemar": first["mcnemar"]}


def merge_evaluations(parts: Sequence[dict[str, Any]], title: str) -> dict[str, Any]:
    """One evaluation of every entry of ``parts``: evaluations of the same items, each scoring
    some of the entries (a study scores one method at a time, the base model's outcomes reused),
    scored and tested together as if evaluated at once.

    Raises:
        ValueError: the parts scored other items, or an entry twice with other outcomes.
    """
    first = parts[0]
    outcomes: dict[str, dict[str, list[bool]]] = {metric: {} for metric in first["outcomes"]}
    for part in parts:
        if part["item_tasks"] != first["item_tasks"] or set(part["outcomes"]) != set(outcomes):
            raise ValueError(f"{part['title']!r} scored other items or metrics than {first['title']!r}")
        for metric, by_entry in part["outcomes"].items():
            for entry, flags in by_entry.items():
                if outcomes[metric].setdefault(entry, flags) != flags:
                    raise ValueError(f"{entry!r} has other {metric} outcomes in {part['title']!r} than in an earlier part")
    items = [_Item(task) for task in first["item_tasks"]]
    tasks = list(first["tasks"])
    scored = score_metrics(items, outcomes, tasks) if "metrics" in first else score_entries(items, outcomes["correct"], tasks)
    return {
        **first,
        "title": title,
        "entries": list(outcomes[next(iter(outcomes))]),
        "adapters": {name: path for part in parts for name, path in part.get("adapters", {}).items()},
        "seconds": {entry: s for part in parts for entry, s in part["seconds"].items()},
        **scored,
        "outcomes": outcomes,
    }


@dataclass(frozen=True)
class _Item:
    """An item known only by its task (all that scoring reads)."""

    task: str


def _cell(score: dict[str, float]) -> str:
    return f"{100 * score['accuracy']:.1f} [{100 * score['low']:.1f}, {100 * score['high']:.1f}]"


def markdown_report(results: dict[str, Any], extra_columns: dict[str, dict[str, str]] | None = None) -> str:
    """The accuracy table (per task and average, 95% intervals) and the paired tests, in Markdown;
    one table and one list of tests per metric when the results have several (``metrics``).

    Args:
        results: as returned by :func:`evaluate`.
        extra_columns: column title → entry → cell, shown after the entry's name.
    """
    lines = [f"### {results['title']}", ""]
    metrics = results.get("metrics") or {"": {"scores": results["scores"], "mcnemar": results["mcnemar"]}}
    for metric, scored in metrics.items():
        lines += _metric_section(results, metric, scored["scores"], scored["mcnemar"], extra_columns or {})
    return "\n".join(lines[:-1]) + "\n"


def entry_table(
    results: dict[str, Any], scores: dict[str, Any], extra_columns: dict[str, dict[str, str]],
    cell: Callable[[dict[str, Any]], str],
) -> list[str]:  # fmt: skip
    """The Markdown rows of entries × tasks and their average (in bold); ``cell`` renders one score."""
    tasks = results["tasks"]
    head = ["entry", *extra_columns, *(f"{t} (n={results['items'][t]})" for t in tasks), "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in results["entries"]:
        cells = [entry, *(col.get(entry, "") for col in extra_columns.values())]
        cells += [cell(scores[entry]["tasks"][t]) for t in tasks] + [f"**{cell(scores[entry]['average'])}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(pair: dict[str, Any]) -> str:
    """A paired test's verdict in words: ``<name> better`` or ``tie``."""
    return {"first": f"{pair['first']} better", "second": f"{pair['second']} better", "tie": "tie"}[pair["verdict"]]


def _metric_section(
    results: dict[str, Any], metric: str, scores: dict[str, Any], pairs: list[dict[str, Any]],
    extra_columns: dict[str, dict[str, str]],
) -> list[str]:  # fmt: skip
    """One metric's table and paired tests (``metric`` empty: the results' only accuracy)."""
    named = f"`{metric}`: accuracy" if metric else "Accuracy"
    lines = [
        f"{named} in % with 95% intervals (Wilson per task; the average is the unweighted mean over tasks).",
        "",
        *entry_table(results, scores, extra_columns, _cell),
    ]
    if pairs:
        lines += [
            "",
            f"Paired McNemar tests{f' of `{metric}`' if metric else ''} on all items (exact; a p-value of 0.05 or more is a tie):",
            "",
            "| first | second | only first right | only second right | p | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for pair in pairs:
            lines.append(
                f"| {pair['first']} | {pair['second']} | {pair['only_first']} | {pair['only_second']} "
                f"| {pair['p_value']:.3g} | {verdict(pair)} |"
            )
    return lines + [""]


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


def write_results(results: dict[str, Any], folder: str | Path, markdown: str | None = None) -> None:
    """``results.json`` and ``results.md`` (``markdown``, default :func:`markdown_report`) in
    ``folder``, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "results.json") as handle:
        json.dump(results, handle, indent=2)
    with atomic_file(folder / "results.md") as handle:
        handle.write(markdown if markdown is not None else markdown_report(results))
