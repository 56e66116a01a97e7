"""Method studies over seeds: train every method with several seeds, score each run on the same
items, and report mean ± sd per method with the paired test pooled over seeds and items and the
smallest difference it could detect (:mod:`zoo.studies`)::

    python -m tools.study study --config configs/studies/commonsense.yaml   # <output>/results.{json,md}
    python -m tools.study curve --config configs/studies/commonsense_curve.yaml  # accuracy against steps
    python -m tools.study seeds --results '[0=runs/s0/results.json, 1=runs/s1/results.json]' --output runs/over-seeds

Each seed runs one method at a time: a ``tools.compare`` run of that method in
``<output>/seed-<s>/<method>`` (its learning rates trained, the chosen adapter scored beside the
base model's outcomes, which are scored once per study and reused) and its further evaluations,
while its adapter is on disk; then the seed's methods are put together in ``<output>/seed-<s>``
(:func:`zoo.report.merge_evaluations`: the same tables and tests as one evaluation of them all).
What is written is read back, so a study resumes by method. The committed configs write into
``docs/results/studies/``: each method's ``results.json`` files are small and are committed, so a
study that spans sessions loses at most the method it was on (adapters, under ``runs/``, stay
local). The first seed chooses every method's learning rate on held-out training records; the
other seeds train with that rate.
``also_evaluate`` scores each seed's adapters on further data (e.g. math-trained adapters on the
commonsense tests: what each method forgets), summarised the same way; in a curve, each budget's
adapters (e.g. the cloze form beside the adapter's own format). Every seed must score the
same items: subsample with the data module's own ``max_eval_records`` (a sample seeded by the
data, not by the run).
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from datamodules.base import FineTuneDataModule
from datamodules.choices import PromptForm
from tools.compare import Contender, check_contenders, compare, write_comparison
from tools.evaluate import evaluate
from zoo.cli import one_line_errors
from zoo.inference import parse_named
from zoo.outputs import atomic_file
from zoo.precision import recipe_precision, slow_bf16_advice
from zoo.report import merge_evaluations, write_results
from zoo.studies import study_markdown, summarize

Scoring = Literal["generation", "loglikelihood"]


@dataclass
class Evaluation:
    """A further evaluation of every seed's adapters.

    Attributes:
        name: its folder and heading.
        data: the data module whose test split is scored.
        scoring: generation (answer extraction) or log-likelihood of the choices.
        prompt_form: with log-likelihood, ``cloze`` or ``adapter`` (``tools.evaluate``).
        dtype, batch_size: the base weights' dtype and the batch; default: the study's
            ``eval_dtype`` and ``eval_batch_size``.
        base_from: an earlier ``results.json`` of these items, scored the same way, whose base-model
            outcomes the first seed reuses (e.g. another study's); default: the study's ``base_from``.
    """

    name: str
    data: FineTuneDataModule
    scoring: Scoring = "loglikelihood"
    prompt_form: PromptForm = "cloze"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    batch_size: int | None = None
    base_from: str | None = None


def _seed_results(folder: Path, **compare_args: Any) -> dict[str, Any]:
    """One seed's comparison, read back when it is complete."""
    done = folder / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    return compare(output=str(folder), **compare_args)


def check_precision(recipe: str, extra_args: list[str] | None, eval_dtypes: list[str | None]) -> None:
    """Refuse a study whose training or evaluation is bf16 on a CPU where bf16 is slow.

    A study's seeds must share their precision, and it spans sessions (and machines), so it is
    not switched to float32 here: the user chooses, for every seed.

    Raises:
        ValueError: naming the slowdown and the fix.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for what, precision in [("training", recipe_precision(recipe, extra_args)), *(("evaluation", d) for d in eval_dtypes)]:
        advice = slow_bf16_advice(precision, device)
        if advice is not None:
            raise ValueError(
                f"this study's {what} is in {precision}, but {advice}. A study's seeds must share their precision, "
                "so it is not switched here: run the study where bf16 is native (a GPU, a CPU with AVX512-BF16 or "
                "AMX), or set float32 in its config (extra_args, eval_dtype, the evaluations' dtype) before its first seed"
            )


def study(
    recipe: str,
    contenders: list[Contender],
    eval_data: FineTuneDataModule,
    output: str,
    seeds: list[int] | None = None,
    steps: int = 100,
    holdout: int = 200,
    scoring: Scoring = "generation",
    prompt_form: PromptForm = "cloze",
    eval_batch_size: int = 32,
    max_new_tokens: int | None = None,
    eval_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    extra_args: list[str] | None = None,
    also_evaluate: list[Evaluation] | None = None,
    reference: str | None = "s2ft",
    title: str = "Study",
    base_from: str | None = None,
) -> dict[str, Any]:
    """Train and score every contender with every seed; summarise over seeds.

    Args:
        recipe, contenders, eval_data, steps, holdout, eval_batch_size, max_new_tokens, eval_dtype,
            extra_args, reference: as ``tools.compare`` takes them, for every seed.
        output: the study's folder (one ``seed-<s>`` folder per seed).
        seeds: ``seed_everything`` of each run; the first chooses the learning rates.
        scoring, prompt_form: how ``eval_data`` is scored.
        also_evaluate: further evaluations of each seed's adapters.
        title: heading of the report.
        base_from: a folder of an earlier comparison on the same items (a curve's budget or another
            study's seed): the first seed reuses its base-model outcomes, from its ``results.json``
            and ``<name>/results.json`` per further evaluation, wherever the settings' digest
            matches (``tools.evaluate --base_from``); later seeds reuse the first seed's.
    """
    seeds = seeds if seeds is not None else [0, 1, 2]
    if not seeds:
        raise ValueError("give at least one seed")
    check_contenders(contenders)  # all of them before the first method of the first seed trains
    check_precision(recipe, extra_args, [eval_dtype, *(extra.dtype for extra in also_evaluate or [])])
    out = Path(output)
    common = {"recipe": recipe, "eval_data": eval_data, "steps": steps, "holdout": holdout, "scoring": scoring,
              "prompt_form": prompt_form, "eval_batch_size": eval_batch_size, "max_new_tokens": max_new_tokens,
              "eval_dtype": eval_dtype, "extra_args": extra_args, "reference": reference}  # fmt: skip
    per_seed: dict[int, dict[str, Any]] = {}
    further: dict[str, dict[int, dict[str, Any]]] = {extra.name: {} for extra in also_evaluate or []}
    earlier = Path(base_from) if base_from else None
    bases = {"main": str(earlier / "results.json") if earlier else None}  # where the base's outcomes are taken from
    for extra in also_evaluate or []:
        bases[extra.name] = extra.base_from or (str(earlier / extra.name / "results.json") if earlier else None)
    for k, seed in enumerate(seeds):
        chosen = per_seed[seeds[0]]["chosen"] if k else None
        runs = [replace(c, lrs=[chosen[c.name]["lr"]]) for c in contenders] if chosen else contenders
        print(f"[study] seed {seed} ({k + 1} of {len(seeds)})", file=sys.stderr)
        folder = out / f"seed-{seed}"
        if (folder / "results.json").is_file():  # finished (or run before seeds ran by method)
            per_seed[seed] = json.loads((folder / "results.json").read_text())
            for extra in also_evaluate or []:
                found = _further(extra, folder, f"{extra.name}, seed {seed}", eval_batch_size, eval_dtype, bases[extra.name])
                if found is None:
                    raise FileNotFoundError(f"{folder}: the adapters of seed {seed} are not on disk, so '{extra.name}' "
                                            f"cannot score them; move {folder} aside to train the seed again")  # fmt: skip
                further[extra.name][seed] = found
        else:
            per_seed[seed], found = _seed_by_method(folder, runs, seed, title, also_evaluate or [], bases, common)
            for name, scored in found.items():
                further[name][seed] = scored
        bases = {name: str(folder / ("results.json" if name == "main" else f"{name}/results.json")) for name in bases}
    summary = summarize({s: r["evaluation"] for s, r in per_seed.items()}, title)
    lrs = {name: f"{run['lr']:g}" for name, run in per_seed[seeds[0]]["chosen"].items()}
    summaries = {name: summarize(evaluations, f"{title}: {name}") for name, evaluations in further.items()}
    sections = [study_markdown(s, {"lr": lrs}) for s in (summary, *summaries.values())]
    results = {"title": title, "seeds": seeds, "summary": summary, "also": summaries,
               "chosen": per_seed[seeds[0]]["chosen"]}  # fmt: skip
    write_results(results, out, "\n".join(sections))
    return results


def _seed_by_method(
    folder: Path,
    contenders: list[Contender],
    seed: int,
    title: str,
    also: list[Evaluation],
    bases: dict[str, str | None],
    common: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One seed, one method at a time in ``<folder>/<method>`` (read back where written), then
    every method together in ``folder``: the seed's results and its further evaluations.

    Args:
        bases: evaluation name (``main`` or a further one's) → the results.json whose base-model
            outcomes are reused; each method's own results serve the next.
        common: :func:`tools.compare.compare`'s other arguments.
    """
    bases = dict(bases)
    parts: list[dict[str, Any]] = []
    further: dict[str, list[dict[str, Any]]] = {extra.name: [] for extra in also}
    for contender in contenders:
        unit = folder / contender.name
        part = _seed_results(unit, contenders=[contender], seed=seed, title=f"{title}, seed {seed}: {contender.name}",
                             base_from=bases["main"], **common)  # fmt: skip
        parts.append(part)
        bases["main"] = str(unit / "results.json")
        for extra in also:
            found = _further(extra, unit, f"{extra.name}, seed {seed}: {contender.name}", common["eval_batch_size"],
                             common["eval_dtype"], bases[extra.name])  # fmt: skip
            if found is None:
                raise FileNotFoundError(f"{unit}: the adapter of {contender.name}, seed {seed}, is not on disk, so "
                                        f"'{extra.name}' cannot score it; move {unit} aside to train it again")  # fmt: skip
            further[extra.name].append(found)
            bases[extra.name] = str(unit / extra.name / "results.json")
    merged = {name: merge_evaluations(found, f"{title}: {name}, seed {seed}") for name, found in further.items()}
    for name, evaluation in merged.items():
        write_results(evaluation, folder / name)
    chosen = {name: run for part in parts for name, run in part["chosen"].items()}
    results = {
        **{key: parts[0][key] for key in ("recipe", "steps", "holdout")},
        "title": f"{title}, seed {seed}",
        "contenders": [c for part in parts for c in part["contenders"]],
        "runs": {name: runs for part in parts for name, runs in part["runs"].items()},
        "chosen": chosen,
        "reference": common["reference"] if common["reference"] in chosen else None,
        "evaluation": merge_evaluations([part["evaluation"] for part in parts], f"{title}, seed {seed}"),
    }
    write_comparison(results, folder)  # last: its results.json marks the seed finished
    return results, merged


def _further(
    extra: Evaluation, folder: Path, title: str, batch_size: int, dtype: str, base_from: str | None
) -> dict[str, Any] | None:
    """``extra`` on the kept adapters of the comparison in ``folder`` (read back once written);
    ``None`` when they are no longer on disk (trained in another checkout: ``runs/`` is not committed)."""
    done = folder / extra.name / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    kept = json.loads((folder / "results.json").read_text())["chosen"]
    if not all(Path(run["adapter"]).is_dir() for run in kept.values()):
        return None
    return evaluate(extra.data, adapters_from=str(folder / "results.json"), scoring=extra.scoring,
                    prompt_form=extra.prompt_form, batch_size=extra.batch_size or batch_size, dtype=extra.dtype or dtype,
                    output=str(folder / extra.name), overwrite=True, title=title, base_from=base_from)  # fmt: skip


def curve(
    recipe: str,
    contenders: list[Contender],
    eval_data: FineTuneDataModule,
    output: str,
    budgets: list[int],
    seed: int = 0,
    holdout: int = 200,
    scoring: Scoring = "generation",
    prompt_form: PromptForm = "cloze",
    eval_batch_size: int = 32,
    eval_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    extra_args: list[str] | None = None,
    also_evaluate: list[Evaluation] | None = None,
    title: str = "Accuracy against training steps",
) -> dict[str, Any]:
    """Accuracy of each contender after each number of steps (one comparison per budget, in
    ``<output>/steps-<n>``): the curve a study's budget is chosen from. Writes ``curve.png`` and
    ``curve.json`` (the average over tasks of each contender and of the base model, 95% intervals),
    and ``curve-<name>.png`` for each further evaluation.

    Args:
        budgets: optimizer steps of each comparison.
        also_evaluate: further evaluations of each budget's adapters (e.g. the cloze form beside
            the adapter's own format); a budget whose adapters are no longer on disk is left out
            of that curve, and ``curve.json`` says which.
        the others: as :func:`study` takes them, for one seed.
    """
    if not budgets:
        raise ValueError("give at least one budget (optimizer steps)")
    out = Path(output)
    curves = {name: {"base": None, "points": {c.name: [] for c in contenders}, "missing": []}
              for name in ["main", *(extra.name for extra in also_evaluate or [])]}  # fmt: skip
    earlier: dict[str, str | None] = dict.fromkeys(curves)  # the base model is scored once, its outcomes passed along
    for steps in budgets:
        folder = out / f"steps-{steps}"
        results = _seed_results(folder, recipe=recipe, contenders=contenders, eval_data=eval_data,
                                steps=steps, holdout=holdout, scoring=scoring, prompt_form=prompt_form, seed=seed,
                                eval_batch_size=eval_batch_size, eval_dtype=eval_dtype, extra_args=extra_args,
                                reference=None, title=f"{title}: {steps} steps", base_from=earlier["main"])  # fmt: skip
        found = {"main": (results["evaluation"], folder / "results.json")}
        for extra in also_evaluate or []:
            scored = _further(extra, folder, f"{title}: {steps} steps, {extra.name}", eval_batch_size, eval_dtype,
                              base_from=earlier[extra.name])  # fmt: skip
            if scored is None:
                print(f"{folder}: its adapters are not on disk; '{extra.name}' leaves out {steps} steps", file=sys.stderr)
                curves[extra.name]["missing"].append(steps)
            else:
                found[extra.name] = (scored, folder / extra.name / "results.json")
        for name, (evaluation, path) in found.items():
            for contender, row in curves[name]["points"].items():
                row.append({"steps": steps, "lr": results["chosen"][contender]["lr"],
                            **evaluation["scores"][contender]["average"]})  # fmt: skip
            curves[name]["base"], earlier[name] = evaluation["scores"]["base"]["average"], str(path)
    main = curves.pop("main")
    summary = {"title": title, "base": main["base"], "points": main["points"], "also": curves}
    with atomic_file(out / "curve.json") as handle:
        json.dump(summary, handle, indent=2)
    _plot_curve(main["points"], main["base"], out / "curve.png", title)
    for name, c in curves.items():
        if c["base"] is not None:  # every budget's adapters gone: nothing to draw
            _plot_curve(c["points"], c["base"], out / f"curve-{name}.png", f"{title}: {name}")
    return summary


def _plot_curve(points: dict[str, list[dict[str, Any]]], base: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in points.items():
        steps = [p["steps"] for p in row]
        ax.errorbar(steps, [100 * p["accuracy"] for p in row], capsize=2, marker="o", label=name,
                    yerr=[[100 * (p["accuracy"] - p["low"]) for p in row], [100 * (p["high"] - p["accuracy"]) for p in row]])  # fmt: skip
    ax.axhline(100 * base["accuracy"], color="grey", linestyle="--", label="base")
    ax.set_xscale("log")
    ax.set_xticks(sorted({p["steps"] for row in points.values() for p in row}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.minorticks_off()
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seeds(results: list[str], output: str, title: str = "Over seeds", metric: str | None = None) -> dict[str, Any]:
    """Summarise evaluations made outside a study, one ``tools.evaluate`` results file per seed
    (``[0=runs/seed-0/results.json, 1=...]``): e.g. recipes trained by ``tools.quickstart`` with
    several seeds, each seed's adapters scored together. The same mean ± sd and pooled paired
    tests as a study's; entries are matched by name, and only those every seed has are compared.

    Args:
        results: ``seed=path`` of each seed's ``results.json`` (with per-item outcomes).
        output: folder of the summary's ``results.json`` and ``results.md``.
        title: heading of the report.
        metric: which outcomes (``correct``, ``acc``, ``acc_norm``); default: the results' first.
    """
    files = parse_named(results, what="seed")
    per_seed: dict[int, dict[str, Any]] = {}
    for seed, path in files.items():
        if not seed.lstrip("-").isdigit():
            raise ValueError(f"seed {seed!r} of {path}: give each file as <seed>=<path>, the seed an integer")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such results file (seed {seed})")
        loaded = json.loads(Path(path).read_text())
        if "outcomes" not in loaded:
            raise ValueError(f"{path}: no per-item 'outcomes' (write it with tools.evaluate)")
        per_seed[int(seed)] = loaded
    summary = summarize(per_seed, title, metric)
    write_results({"title": title, "files": files, "summary": summary},
                  output, study_markdown(summary))  # fmt: skip
    return summary


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        CLI([study, curve, seeds], as_positional=False)


if __name__ == "__main__":
    main()
