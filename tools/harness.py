"""Run lm-evaluation-harness tasks over the base model and any number of adapters, in one process.

The base model is loaded once (:class:`zoo.harness.model.FtzooLM`); each entry (the base, then
each adapter, fused in place) is evaluated by ``lm_eval.simple_evaluate`` on the same items.
Out, per entry, lm-eval's own files (``lm_eval/<entry>/results_<date>.json`` and
``samples_<task>_<date>.jsonl``, as its ``--output_path --log_samples`` writes them), and
ftzoo's paired table over all entries from the per-item ``acc`` / ``acc_norm`` lm-eval logged:
accuracy with Wilson intervals, McNemar's test between every two entries (``results.json``,
``results.md``)::

    python -m tools.harness --tasks '[llm_adapters_arc_easy, llm_adapters_piqa]' \\
        --adapters '[s2ft=runs/s2ft/adapter, lora=runs/lora/adapter]' --limit 200 --output runs/harness

``llm_adapters_*`` are ftzoo's offline tasks over the LLM-Adapters test sets in ``--data_dir``
(``zoo/harness/tasks``); any task of lm-eval's registry works too where its data is available.
Needs the optional extra ``ftzoo[eval]`` (``lm-eval``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zoo.cli import one_line_errors
from zoo.inference import BASE, parse_named
from zoo.outputs import check_writable
from zoo.report import markdown_report, score_entries, write_results


@dataclass(frozen=True)
class LoggedItem:
    """One document of one task, as lm-eval's per-sample log names it."""

    task: str
    doc_id: int


def harness(
    tasks: list[str],
    adapters: list[str] | None = None,
    base_model: str | None = None,
    include_base: bool = True,
    data_dir: str | None = None,
    include_path: list[str] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    metrics: list[str] | None = None,
    batch_size: int = 16,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "auto",
    output: str | None = None,
    title: str = "lm-evaluation-harness",
) -> dict[str, Any]:
    """Evaluate the base model and adapters on lm-eval tasks; pair their per-item results.

    Args:
        tasks: lm-eval task, group or tag names (``llm_adapters_arc_easy``, ``arc_easy``, ...).
        adapters: adapter folders, as ``path`` or ``name=path``.
        base_model: the base model; default: the one the first adapter records, else ``smollm2-135m``.
        include_base: also evaluate the base model itself (entry ``base``).
        data_dir: the LLM-Adapters data folder for the ``llm_adapters_*`` tasks; default:
            ``$FTZOO_REASONING_DATA``, else ``shared/data/reasoning`` beside the repository.
        include_path: more folders of task YAML files for lm-eval.
        limit: evaluate the first ``limit`` documents of each task (the same for every entry).
        num_fewshot: few-shot examples per prompt; default: each task's own (0 for ftzoo's).
        metrics: per-item metrics to pair (0/1 per document); default ``acc`` and ``acc_norm``.
            The first is the top level of ``results.json``, the others under ``other_metrics``.
        batch_size: requests per forward pass.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ...
        output: folder for lm-eval's files (``lm_eval/<entry>/``), ``results.json`` and ``results.md``.
        title: heading of the Markdown report.

    Returns:
        The paired report of the first metric (``entries``, ``tasks``, ``items``, ``scores``,
        ``mcnemar``), with ``other_metrics``, lm-eval's aggregate numbers (``lm_eval``) and timings.

    Raises:
        ImportError: lm-eval is not installed (``pip install 'ftzoo[eval]'``).
        ValueError: no task, an unknown task, no entry, an entry named ``base``, or entries that
            logged different documents.
        DataError: an ``llm_adapters_*`` task's data is missing or malformed (checked before
            the model loads).
        OutputPathError: ``output`` cannot be written (checked before anything is loaded).
    """
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    from zoo.harness.model import FtzooLM

    if not tasks:
        raise ValueError("name at least one task (--tasks '[llm_adapters_arc_easy]')")
    metrics = metrics or ["acc", "acc_norm"]
    paths = parse_named(adapters or [])
    if not include_base and not paths:
        raise ValueError("nothing to evaluate: give adapters, or leave include_base on")
    if output is not None:
        check_writable(output)  # before the model loads; lm-eval only warns when it cannot save
    manager = task_manager(tasks, data_dir, include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        ours = ", ".join(t for t in manager.all_tasks if t.startswith("llm_adapters"))
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: not in lm-eval's registry nor in ftzoo's ({ours})")
    manager.load(list(tasks))  # the data is there and parses, before the model loads
    lm = FtzooLM(adapters=paths, base_model=base_model, dtype=dtype, device=device, batch_size=batch_size)
    entries = ([BASE] if include_base else []) + list(paths)
    outcomes: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    aggregates: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for entry in entries:
        lm.activate(entry)
        started = time.monotonic()
        tracker = EvaluationTracker(output_path=str(Path(output) / "lm_eval")) if output else None
        results = simple_evaluate(
            model=lm,
            model_args={"model": entry, "base_model": lm.base_info.name_or_path, "adapter": paths.get(entry)},
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            evaluation_tracker=tracker,
            log_samples=True,
        )
        seconds[entry] = round(time.monotonic() - started, 1)
        samples = results.pop("samples")
        outcomes[entry] = {task: {s["doc_id"]: _flags(s, metrics) for s in rows} for task, rows in samples.items()}
        aggregates[entry] = results["results"]
        if tracker is not None:  # as lm-eval's command line saves them (the tracker rewrites samples)
            tracker.save_results_aggregated(results=results, samples=samples)
            for task in results["configs"]:
                tracker.save_results_samples(task_name=task, samples=samples[task])
        print(f"{entry}: {_summary(results['results'])} ({seconds[entry]:.0f} s)", file=sys.stderr)
    lm.activate(BASE)

    reports = [_paired(outcomes, entries, metric, f"{title} ({metric})") for metric in metrics]
    report = {
        **reports[0],
        "metric": metrics[0],
        "other_metrics": {metric: r for metric, r in zip(metrics[1:], reports[1:])},
        "base_model": lm.base_info.name_or_path,
        "adapters": paths,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "lm_eval": aggregates,
        "seconds": seconds,
    }
    if output is not None:
        write_results(report, output, markdown="\n".join(markdown_report(r) for r in reports))
    return report


def task_manager(tasks: list[str], data_dir: str | None = None, include_path: list[str] | None = None) -> Any:
    """lm-eval's ``TaskManager`` over ftzoo's tasks and ``include_path``, the data folder in its metadata.

    lm-eval's own tasks (about 15,000 YAML files, a minute to index on 2 cores) are indexed only
    when a task is not found among these.
    """
    from lm_eval.tasks import TaskManager

    from zoo.harness import TASKS_DIR

    paths = [str(TASKS_DIR), *(include_path or [])]
    metadata = {"data_dir": data_dir} if data_dir else None
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if all(task in manager.all_tasks for task in tasks):
        return manager
    return TaskManager(include_path=paths, metadata=metadata)


def _flags(sample: dict[str, Any], metrics: list[str]) -> dict[str, bool]:
    """The sample's 0/1 metrics as booleans (others, such as a perplexity, are not paired)."""
    return {m: bool(sample[m]) for m in metrics if sample.get(m) in (0, 1, True, False)}


def _paired(
    outcomes: dict[str, dict[str, dict[int, dict[str, bool]]]], entries: list[str], metric: str, title: str
) -> dict[str, Any]:
    """``zoo.report``'s results for one metric, over the tasks where every document logged it.

    Raises:
        ValueError: two entries logged different documents of a task.
    """
    first = outcomes[entries[0]]
    items: list[LoggedItem] = []
    for task, docs in first.items():
        for entry in entries[1:]:
            if sorted(outcomes[entry][task]) != sorted(docs):
                raise ValueError(f"task {task}: entries {entries[0]} and {entry} logged different documents")
        if all(metric in flags for entry in entries for flags in outcomes[entry][task].values()):
            items += [LoggedItem(task, doc_id) for doc_id in sorted(docs)]
    tasks = list(dict.fromkeys(item.task for item in items))
    correct = {entry: [outcomes[entry][i.task][i.doc_id][metric] for i in items] for entry in entries}
    return {
        "title": title,
        "entries": entries,
        "tasks": tasks,
        "items": {t: sum(i.task == t for i in items) for t in tasks},
        **score_entries(items, correct, tasks),
    }


def _summary(results: dict[str, dict[str, Any]]) -> str:
    """``task acc=0.512 acc_norm=0.498; ...`` from lm-eval's aggregate results."""
    parts = []
    for task, values in results.items():
        numbers = " ".join(
            f"{k.split(',')[0]}={v:.3f}" for k, v in values.items() if "stderr" not in k and isinstance(v, float)
        )
        parts.append(f"{task} {numbers}")
    return "; ".join(parts)


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        results = CLI(harness, as_positional=False)
    print(markdown_report(results), end="")
    for other in results["other_metrics"].values():
        print("\n" + markdown_report(other), end="")


if __name__ == "__main__":
    main()
