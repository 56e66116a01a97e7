"""Studies over seeds: which method is better, by how much, and what the study could have seen.

One evaluation (``tools.evaluate``) scores entries on fixed items: its intervals cover the
items' noise, not the training run's. A method comparison trains every method with several
seeds and scores each run on the same items, so a summary reports, per entry:

* the mean ± standard deviation over seeds of each task's accuracy and of their average;

and for every two entries:

* McNemar's exact test pooled over seeds and items (run ``s`` of one method is paired with run
  ``s`` of the other on each item), its p-value and verdict;
* the smallest difference that test could detect with 95% confidence and 80% power, given the
  pooled number of items and the observed fraction of discordant ones
  (:func:`zoo.evaluation.minimum_detectable_difference`): a tie is only as informative as this.

The input is one results dictionary per seed with per-item outcomes (``outcomes``: metric →
entry → list of booleans, ``item_tasks``: the task of each item), as ``tools.evaluate`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any

from zoo.evaluation import mcnemar, mean_and_sd, minimum_detectable_difference
from zoo.report import entry_table, verdict


def _check_items(per_seed: Mapping[int, Mapping[str, Any]], metric: str) -> tuple[list[str], list[str]]:
    """The entries common to every seed and the task of each item, checked to be the same items."""
    if not per_seed:
        raise ValueError("a study needs the results of at least one seed")
    first_seed, first = next(iter(per_seed.items()))
    for seed, results in per_seed.items():
        if results["item_tasks"] != first["item_tasks"]:
            raise ValueError(f"seed {seed} was scored on other items than seed {first_seed}: its tasks differ item by item")
        if metric not in results["outcomes"]:
            raise ValueError(f"seed {seed} has no outcomes of metric {metric!r}, only {sorted(results['outcomes'])}")
    entries = [e for e in first["entries"] if all(e in r["outcomes"][metric] for r in per_seed.values())]
    return entries, list(first["item_tasks"])


def _accuracy(flags: list[bool], tasks: list[str], task: str) -> float:
    chosen = [f for f, t in zip(flags, tasks) if t == task]
    return sum(chosen) / len(chosen)


def summarize(per_seed: Mapping[int, Mapping[str, Any]], title: str = "Study", metric: str | None = None) -> dict[str, Any]:
    """Mean ± sd over seeds per entry and task, and the pooled paired test between every two entries.

    Args:
        per_seed: seed → results with ``entries``, ``outcomes`` and ``item_tasks``.
        title: the report's heading.
        metric: which outcomes (``acc``, ``acc_norm``, ``correct``); default: the results' first.

    Raises:
        ValueError: no seeds, seeds scored on different items, or a metric they lack.
    """
    metric = metric or next(iter(next(iter(per_seed.values()), {}).get("outcomes", {})), "correct")
    entries, item_tasks = _check_items(per_seed, metric)
    outcomes = {seed: results["outcomes"][metric] for seed, results in per_seed.items()}
    tasks = list(dict.fromkeys(item_tasks))
    seeds = list(per_seed)
    scores: dict[str, Any] = {}
    for entry in entries:
        by_task = {t: [_accuracy(o[entry], item_tasks, t) for o in outcomes.values()] for t in tasks}
        averages = [sum(by_task[t][k] for t in tasks) / len(tasks) for k in range(len(seeds))]
        scores[entry] = {
            "tasks": {t: dict(zip(("mean", "sd"), mean_and_sd(v)), values=v) for t, v in by_task.items()},
            "average": dict(zip(("mean", "sd"), mean_and_sd(averages)), values=averages),
        }
    pairs = []
    for first, second in combinations(entries, 2):
        a = [f for o in outcomes.values() for f in o[first]]
        b = [f for o in outcomes.values() for f in o[second]]
        per_task = {}
        for t in tasks:  # item k of the pooled lists is item k mod n of its seed
            keep = [k for k in range(len(a)) if item_tasks[k % len(item_tasks)] == t]
            per_task[t] = _pooled_test([a[k] for k in keep], [b[k] for k in keep])
        pairs.append({"first": first, "second": second, **_pooled_test(a, b), "tasks": per_task})
    return {
        "title": title,
        "metric": metric,
        "seeds": seeds,
        "entries": entries,
        "tasks": tasks,
        "items": {t: item_tasks.count(t) for t in tasks},
        "scores": scores,
        "pairs": pairs,
    }


def _pooled_test(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """McNemar's test of two entries' pooled outcomes, their difference, and what it could detect."""
    test = mcnemar(a, b)
    discordant = (test.only_first + test.only_second) / len(a)
    return {
        "difference": (sum(a) - sum(b)) / len(a),
        **test.as_dict(),
        "pooled_items": len(a),
        "discordant": discordant,
        "detectable": minimum_detectable_difference(len(a), discordant) if discordant > 0 else 0.0,
    }


def _mean_sd(cell: Mapping[str, Any]) -> str:
    sd = cell["sd"]
    return f"{100 * cell['mean']:.1f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.1f}")  # nan: one seed


def study_markdown(summary: Mapping[str, Any], extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The mean ± sd table and the pooled paired tests, in Markdown."""
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [
        f"### {summary['title']}",
        "",
        (
            f"{summary['metric']}: accuracy in %, mean ± standard deviation over seeds {seeds} (the average is the "
            "unweighted mean over tasks)."
        ),
        "",
        *entry_table(dict(summary), summary["scores"], dict(extra_columns or {}), _mean_sd),
    ]
    lines += [
        "",
        (
            f"Paired McNemar tests pooled over seeds {seeds} and all items (exact; p ≥ 0.05 is a tie); "
            "'detectable' is the smallest difference the test would find with 95% confidence and 80% power:"
        ),
        "",
        "| first | second | difference (points) | only first right | only second right | p | verdict | detectable (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pair in summary["pairs"]:
        lines.append(
            f"| {pair['first']} | {pair['second']} | {100 * pair['difference']:+.1f} | {pair['only_first']} "
            f"| {pair['only_second']} | {pair['p_value']:.3g} | {verdict(pair)} | {100 * pair['detectable']:.1f} |"
        )
    tasks = summary["tasks"]
    if len(tasks) > 1:
        lines += [
            "",
            "Per task, the same pooled test: difference in points (p; detectable):",
            "",
            "| first | second | " + " | ".join(tasks) + " |",
            "| --- | --- | " + " | ".join("---" for _ in tasks) + " |",
        ]
        for pair in summary["pairs"]:
            cells = [f"{100 * c['difference']:+.1f} ({c['p_value']:.2g}; {100 * c['detectable']:.1f})"
                     for c in (pair["tasks"][t] for t in tasks)]  # fmt: skip
            lines.append(f"| {pair['first']} | {pair['second']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
