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

``--scoring loglikelihood`` measures what a model knows rather than whether it writes the
answer format: each choice of a multiple-choice item is scored by its log-likelihood
(:mod:`zoo.loglikelihood`, lm-evaluation-harness's rules), and ``acc`` and ``acc_norm`` are
reported, with ``choices.jsonl`` holding every choice's log-probability::

    python -m tools.evaluate --scoring loglikelihood --data configs/data/commonsense_test.yaml \
        --output runs/eval/knowledge

``--prompt_form cloze`` (default) asks lm-eval's "Question: ...\nAnswer:" and scores each
choice's text; ``--prompt_form adapter`` scores "the correct answer is answerK" after the
record's prompt in the data module's template, the format LLM-Adapters adapters are trained on.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from datamodules.base import FineTuneDataModule
from datamodules.choices import ChoiceItem, PromptForm
from datamodules.encode import Example
from zoo.cli import one_line_errors
from zoo.evaluation import sample_items
from zoo.inference import BASE, AdapterSwitcher, greedy_answers, load_base, parse_named, pick_device, read_adapter
from zoo.loading import load_tokenizer
from zoo.loglikelihood import ItemScore, score_items
from zoo.outputs import atomic_file, check_report_folder
from zoo.report import markdown_report, score_entries, score_metrics, write_results

Scoring = Literal["generation", "loglikelihood"]


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
    overwrite: bool = False,
    title: str = "Evaluation",
    scoring: Scoring = "generation",
    prompt_form: PromptForm = "cloze",
    base_from: str | None = None,
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
        batch_size: prompts generated together (log-likelihood: choices scored together).
        max_new_tokens: generation length; default: the data module's.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ...
        output: folder for ``results.json``, ``results.md`` and ``generations.jsonl`` (log-likelihood:
            ``choices.jsonl``); checked before anything is evaluated.
        overwrite: replace an earlier report in ``output``.
        title: heading of the Markdown report.
        scoring: ``generation`` (greedy answers, scored by the data module's answer extraction) or
            ``loglikelihood`` (each choice of a multiple-choice item scored; ``acc`` and ``acc_norm``).
        prompt_form: with log-likelihood: ``cloze`` (lm-eval's question/answer text) or ``adapter``
            (the record's prompt in the data module's template, the answer sentence scored).
        base_from: an earlier ``results.json`` (of this tool, ``tools.compare`` or a study seed)
            whose base-model outcomes are reused when it scored the same items the same way
            (same ``base_key``: base model, dtype, scoring, prompt and items); otherwise the base
            is scored again. A study scores its base once.

    Returns:
        ``{"entries", "tasks", "items", "scores", "mcnemar", "seconds", ...}`` (also ``results.json``),
        with each item's task (``item_tasks``) and outcome (``outcomes``: metric → entry → booleans,
        the metric ``correct`` for generation) for studies over seeds (:mod:`zoo.studies`);
        with log-likelihood, ``"metrics"`` holds ``scores`` and ``mcnemar`` of ``acc`` and of
        ``acc_norm``, and ``scores``/``mcnemar`` are those of ``acc``.
    """
    if scoring not in ("generation", "loglikelihood"):
        raise ValueError(f"unknown scoring {scoring!r}; choose 'generation' or 'loglikelihood'")
    check_report_folder(output, overwrite)
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
    if scoring == "loglikelihood":
        choice_items = sample_items(data.choice_items("test"), max_records, seed)
        key = base_key(choice_items, base_model=info.name_or_path, dtype=dtype, scoring=scoring,
                       prompt_form=prompt_form, prompt_style=data.prompt_style, system_prompt=data.system_prompt)  # fmt: skip
        reused = reusable_base(base_from, key) if include_base else None
        common = {"title": title, "base_model": info.name_or_path, "adapters": paths, "max_records": max_records,
                  "seed": seed, "dtype": dtype, "base_key": key, "base_from": base_from if reused else None}  # fmt: skip
        return evaluate_choices(data, model, tokenizer, AdapterSwitcher(model, info), loaded, choice_items,
                                include_base, prompt_form, batch_size, common, output, reused)  # fmt: skip
    items = sample_items(data.examples("test"), max_records, seed)
    if not items:
        raise ValueError(f"{type(data).__name__} has no test items to evaluate")
    length = max_new_tokens or data.max_new_tokens
    key = base_key(items, base_model=info.name_or_path, dtype=dtype, scoring=scoring, max_new_tokens=length)
    reused = reusable_base(base_from, key) if include_base else None
    tasks = list(dict.fromkeys(e.task for e in items))
    switcher = AdapterSwitcher(model, info)
    for name, adapter in loaded.items():
        switcher.add(name, adapter)
    entries = ([BASE] if include_base else []) + list(loaded)

    generations: dict[str, list[str]] = {}
    correct: dict[str, list[bool]] = {}
    seconds: dict[str, float] = {}
    if reused is not None:
        correct[BASE], seconds[BASE] = reused["outcomes"]["correct"][BASE], reused["seconds"][BASE]
    for entry in entries:
        if entry in correct:
            continue
        switcher.activate(entry)
        started = time.monotonic()
        prompts = [e.prompt_ids for e in items]
        generations[entry] = greedy_answers(model, tokenizer, prompts, length, batch_size, description=entry)
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
        "dtype": dtype,
        "base_key": key,
        "base_from": base_from if reused is not None else None,
        "seconds": seconds,
        **score_entries(items, correct, tasks),
        "item_tasks": [e.task for e in items],
        "outcomes": {"correct": correct},
    }
    if output is not None:
        write_report(results, items, generations, correct, Path(output))
    return results


def base_key(items: list[ChoiceItem] | list[Example], **settings: Any) -> str:
    """A digest of what the base model's outcomes depend on (its name, dtype, scoring, prompt
    settings and every item): two evaluations with the same key score the base identically."""
    payload = {"settings": settings, "items": [asdict(item) for item in items]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reusable_base(path: str | None, key: str) -> dict[str, Any] | None:
    """The earlier evaluation at ``path`` (a ``tools.evaluate`` or ``tools.compare`` results.json)
    when it scored the base on the same items the same way; ``None`` (said why) otherwise."""
    if path is None:
        return None
    if not Path(path).is_file():
        print(f"{path} does not exist: the base model is scored again", file=sys.stderr)
        return None
    earlier = json.loads(Path(path).read_text())
    earlier = earlier.get("evaluation", earlier)  # a comparison holds its evaluation
    if earlier.get("base_key") != key or BASE not in earlier.get("entries", []):
        print(f"{path} scored other items, settings or no base model: the base model is scored again", file=sys.stderr)
        return None
    print(f"base model: outcomes reused from {path} (same items, same settings)", file=sys.stderr)
    return earlier


def evaluate_choices(
    data: FineTuneDataModule,
    model: Any,
    tokenizer: Any,
    switcher: AdapterSwitcher,
    loaded: dict[str, Any],
    items: list[ChoiceItem],
    include_base: bool,
    prompt_form: PromptForm,
    batch_size: int,
    common: dict[str, Any],
    output: str | None,
    reused: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` by log-likelihood: every entry scores every choice of the same items
    (the base's outcomes taken from ``reused``, an earlier evaluation, when given)."""
    if not items:
        raise ValueError(f"{type(data).__name__} has no test items to evaluate")
    tasks = list(dict.fromkeys(item.task for item in items))
    for name, adapter in loaded.items():
        switcher.add(name, adapter)
    entries = ([BASE] if include_base else []) + list(loaded)
    template = data.prompt_template() if prompt_form == "adapter" else None
    scored: dict[str, list[ItemScore]] = {}
    seconds: dict[str, float] = {}
    outcomes: dict[str, dict[str, list[bool]]] = {"acc": {}, "acc_norm": {}}
    if reused is not None:
        for metric, by_entry in outcomes.items():
            by_entry[BASE] = reused["outcomes"][metric][BASE]
        seconds[BASE] = reused["seconds"][BASE]
    for entry in entries:
        if entry in seconds:
            continue
        switcher.activate(entry)
        started = time.monotonic()
        scored[entry] = score_items(model, tokenizer, items, prompt_form, template, batch_size, description=entry)
        seconds[entry] = round(time.monotonic() - started, 1)
        acc = sum(s.acc for s in scored[entry])
        norm = sum(s.acc_norm for s in scored[entry])
        print(f"{entry}: acc {acc}/{len(items)}, acc_norm {norm}/{len(items)} ({seconds[entry]:.0f} s)", file=sys.stderr)
        outcomes["acc"][entry] = [s.acc for s in scored[entry]]
        outcomes["acc_norm"][entry] = [s.acc_norm for s in scored[entry]]
    switcher.activate(BASE)
    outcomes = {metric: {entry: by_entry[entry] for entry in entries} for metric, by_entry in outcomes.items()}
    results = {
        **common,
        "scoring": "loglikelihood",
        "prompt_form": prompt_form,
        "prompt_style": data.prompt_style if prompt_form == "adapter" else None,
        "entries": entries,
        "tasks": tasks,
        "items": {t: sum(item.task == t for item in items) for t in tasks},
        "seconds": seconds,
        **score_metrics(items, outcomes, tasks),
        "item_tasks": [item.task for item in items],
        "outcomes": outcomes,
    }
    if output is not None:
        folder = Path(output)
        write_results(results, folder, markdown_report(results, {"seconds": {e: f"{s:.0f}" for e, s in seconds.items()}}))
        with atomic_file(folder / "choices.jsonl") as handle:
            for entry, scores in scored.items():
                for i, (item, score) in enumerate(zip(items, scores)):
                    row = {"entry": entry, "item": i, "task": item.task, "source": item.source, "gold": item.gold,
                           "logprobs": score.logprobs, "greedy": score.greedy, "lengths": score.lengths,
                           "prediction": score.prediction, "prediction_norm": score.prediction_norm,
                           "acc": score.acc, "acc_norm": score.acc_norm}  # fmt: skip
                    handle.write(json.dumps(row) + "\n")
    return results


def write_report(
    results: dict[str, Any],
    items: list[Example],
    generations: dict[str, list[str]],
    correct: dict[str, list[bool]],
    folder: Path,
) -> None:
    """``results.json``, ``results.md`` and ``generations.jsonl`` (one line per entry and item)."""
    write_results(results, folder)
    with atomic_file(folder / "generations.jsonl") as handle:
        for entry, texts in generations.items():
            for i, (example, text, ok) in enumerate(zip(items, texts, correct[entry])):
                row = {"entry": entry, "item": i, "task": example.task, "answer": example.answer, "correct": ok}
                handle.write(json.dumps({**row, "generation": text}) + "\n")


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        results = CLI(evaluate, as_positional=False)
    print(markdown_report(results))


if __name__ == "__main__":
    main()
