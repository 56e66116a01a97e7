"""Train several methods on the same data and token budget, pick each one's learning rate on
held-out training records, evaluate them side by side, and write one table and one chart.

For every method and every learning rate in its grid, one ``lightning fit`` of the shared
recipe runs for ``steps`` optimizer steps on the same batches (same seed, same data order,
so the same tokens: the report shows the counts), with ``holdout`` training records set
aside. The rate whose adapter has the lowest loss on those records is kept; the kept adapters
and the base model are then evaluated on the same test items (:mod:`tools.evaluate`). A run
whose ``run.json`` exists is not repeated, so an interrupted comparison resumes where it was::

    python -m tools.compare --config configs/compare/math.yaml

Output folder: ``results.json``, ``results.md``, ``accuracy.png``, and ``runs/<method>/lr-*/``
(the kept adapter, the fit's logs, ``run.json``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from datamodules.base import FineTuneDataModule
from datamodules.choices import PromptForm
from tools.evaluate import Scoring, evaluate
from zoo.callbacks import TokenCounter
from zoo.cli import build_cli, one_line_errors
from zoo.evaluation import mean_response_loss
from zoo.outputs import atomic_file, check_writable
from zoo.plugins import PluginError, available_methods, method_hooks, resolve_method_class
from zoo.report import markdown_report, plot_results


@dataclass
class Contender:
    """One method in the comparison.

    Attributes:
        name: its label in the tables (``lora-r4``).
        method: the method's registered name (``lora``) or class path.
        config: the method's arguments (its init args).
        lrs: the learning rates to search.
    """

    name: str
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])


def check_contenders(contenders: list[Contender]) -> None:
    """Check every contender before the first run, so that a mistake in the last one does not
    surface after the others have trained: at least one, distinct names, a non-empty grid of
    positive learning rates, and a method that is installed and accepts the config.

    Raises:
        ValueError: naming the contender (its position and name) and the problem.
    """
    if not contenders:
        raise ValueError("give at least one contender (--contenders): there is nothing to compare")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must differ: {names}")
    for i, contender in enumerate(contenders, 1):
        which = f"contender {i} ({contender.name!r})"
        if not contender.lrs:
            raise ValueError(f"{which}: its learning-rate list (lrs) is empty; give at least one rate")
        bad = [lr for lr in contender.lrs if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"{which}: learning rates must be positive numbers, got {bad}")
        try:
            method_hooks(resolve_method_class(contender.method)(**contender.config))
        except (PluginError, TypeError, ValueError) as err:
            raise ValueError(
                f"{which}: method {contender.method!r} with config {contender.config}: {err}"
            ) from err


def fit_flags(contender: Contender, lr: float) -> list[str]:
    """The ``lightning fit`` flags that set the contender's method and learning rate."""
    class_path = contender.method
    methods = available_methods()
    if class_path in methods:
        entry = methods[class_path].cls
        class_path = f"{entry.__module__}.{entry.__qualname__}"
    flags = ["--model.method", class_path]
    for key, value in contender.config.items():
        flags += [f"--model.method.init_args.{key}", value if isinstance(value, str) else json.dumps(value)]
    return flags + ["--model.optimizer.init_args.lr", repr(lr)]


def train_one(recipe: str, contender: Contender, lr: float, steps: int, holdout: int, folder: Path, seed: int,
              extra_args: list[str]) -> dict[str, Any]:  # fmt: skip
    """One fit; returns (and writes to ``run.json``) its held-out loss, tokens, size and time."""
    summary_file = folder / "run.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished earlier attempt
    args = ["--config", recipe, *fit_flags(contender, lr), "--seed_everything", str(seed),
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--data.init_args.holdout", str(holdout),
            "--data.init_args.order_seed", str(seed),
            "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.logger.init_args.name", "logs", "--model.adapter_dir", str(folder / "adapter"),
            *extra_args]  # fmt: skip
    cli = build_cli(args, run=False)  # not run: the token counter joins the trainer first
    counter = TokenCounter()
    cli.trainer.callbacks.append(counter)
    started = time.monotonic()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    minutes = (time.monotonic() - started) / 60
    summary = {
        "name": contender.name,
        "lr": lr,
        "steps": cli.trainer.global_step,
        "batches": counter.batches,
        "tokens": counter.tokens,
        "response_tokens": counter.response_tokens,
        "trainable_parameters": cli.model.trainable_parameter_count,
        "base_parameters": cli.model.base_parameter_count,
        "holdout_records": holdout,
        "holdout_loss": mean_response_loss(cli.model.model, cli.datamodule.holdout_dataloader()),
        "train_minutes": round(minutes, 2),
        "adapter": str(folder / "adapter"),
    }
    with atomic_file(summary_file) as handle:
        json.dump(summary, handle, indent=2)
    return summary


def compare(
    recipe: str,
    contenders: list[Contender],
    eval_data: FineTuneDataModule,
    output: str,
    steps: int = 100,
    holdout: int = 200,
    max_records: int | None = None,
    reference: str | None = "s2ft",
    seed: int = 0,
    eval_batch_size: int = 32,
    max_new_tokens: int | None = None,
    eval_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    extra_args: list[str] | None = None,
    title: str = "Comparison",
    scoring: Scoring = "generation",
    prompt_form: PromptForm = "cloze",
    base_from: str | None = None,
) -> dict[str, Any]:
    """Train, select and evaluate every contender; write the table and the chart.

    Args:
        recipe: the ``lightning fit`` config every run shares (model, data, trainer); its method
            and learning rate are replaced by each contender's.
        contenders: the methods and their learning-rate grids.
        eval_data: the data module whose test split scores the kept adapters.
        output: the comparison's folder.
        steps: optimizer steps of every run (the token budget, with the recipe's batch size).
        holdout: training records set aside to choose the learning rate on.
        max_records: test items per task (a seeded sample, the same for every entry).
        reference: the contender whose trainable-parameter count the others are compared with.
        seed: ``seed_everything`` of every run (initialisation and selection) and its data module's
            ``order_seed`` (the training order); records, holdout and test items stay the data's own.
        eval_batch_size: prompts generated together.
        max_new_tokens: generation length; default: the evaluation data module's.
        eval_dtype: dtype of the base weights during evaluation.
        extra_args: further ``lightning fit`` flags for every run.
        title: heading of the report.
        scoring: how the evaluation scores: ``generation`` or ``loglikelihood`` (what the
            models know of multiple-choice items; :func:`tools.evaluate.evaluate`).
        prompt_form: the log-likelihood prompt form, ``cloze`` or ``adapter``.
        base_from: an earlier results.json whose base-model outcomes are reused if it scored the
            same items the same way (:func:`tools.evaluate.evaluate`).
    """
    check_contenders(contenders)
    check_writable(output)  # before the first run, not when its logs or the report are written
    out = Path(output)
    runs: dict[str, list[dict[str, Any]]] = {}
    for contender in contenders:
        runs[contender.name] = []
        for lr in contender.lrs:
            folder = out / "runs" / contender.name / f"lr-{lr:g}"
            print(f"[compare] {contender.name} lr={lr:g} -> {folder}", file=sys.stderr)
            runs[contender.name].append(train_one(recipe, contender, lr, steps, holdout, folder, seed, extra_args or []))
    chosen = {name: min(tried, key=lambda r: r["holdout_loss"]) for name, tried in runs.items()}
    for name, tried in runs.items():  # only the kept adapters are needed (full FT's are the whole model)
        for run in tried:
            if run is not chosen[name] and Path(run["adapter"]).exists():
                shutil.rmtree(run["adapter"])
    evaluation = evaluate(
        eval_data,
        adapters=[f"{name}={run['adapter']}" for name, run in chosen.items()],
        max_records=max_records,
        seed=seed,
        batch_size=eval_batch_size,
        max_new_tokens=max_new_tokens,
        dtype=eval_dtype,
        output=str(out / "eval"),
        overwrite=True,  # a resumed comparison evaluates again
        title=title,
        scoring=scoring,
        prompt_form=prompt_form,
        base_from=base_from,
    )
    results = {
        "title": title,
        "recipe": recipe,
        "steps": steps,
        "holdout": holdout,
        "contenders": [asdict(c) for c in contenders],
        "runs": runs,
        "chosen": chosen,
        "reference": reference if reference in chosen else None,
        "evaluation": evaluation,
    }
    write_comparison(results, out)
    return results


def write_comparison(results: dict[str, Any], folder: Path) -> None:
    """A comparison's ``results.json``, ``accuracy.png`` and ``results.md`` (each written whole)."""
    with atomic_file(folder / "results.json") as handle:
        json.dump(results, handle, indent=2)
    plot_results(results["evaluation"], folder / "accuracy.png", results["title"])
    with atomic_file(folder / "results.md") as handle:
        handle.write(comparison_report(results))


def comparison_report(results: dict[str, Any]) -> str:
    """The runs table (trainable parameters, tokens, learning rates, times) and the accuracy table."""
    chosen, runs = results["chosen"], results["runs"]
    reference = chosen.get(results["reference"]) if results["reference"] else None
    lines = [
        f"## {results['title']}",
        "",
        (
            f"Every run: {results['steps']} optimizer steps on the same batches; learning rate chosen by the loss on "
            f"{results['holdout']} held-out training records."
        ),
        "",
        "| method | trainable parameters | × " + (results["reference"] or "—") + " | training tokens (response) "
        "| learning rates tried (held-out loss) | chosen | train minutes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in chosen.items():
        ratio = f"{run['trainable_parameters'] / reference['trainable_parameters']:.2f}" if reference else ""
        tried = ", ".join(f"{r['lr']:g} ({r['holdout_loss']:.3f})" for r in runs[name])
        lines.append(
            f"| {name} | {run['trainable_parameters']:,} ({run['trainable_parameters'] / run['base_parameters']:.2%}) "
            f"| {ratio} | {run['tokens']:,} ({run['response_tokens']:,}) | {tried} | {run['lr']:g} "
            f"| {run['train_minutes']:.1f} |"
        )
    lines.append("")
    trainable = {name: f"{run['trainable_parameters'] / 1e6:.2f} M" for name, run in chosen.items()}
    lines.append(markdown_report(results["evaluation"], {"trainable": trainable}))
    return "\n".join(lines)


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        results = CLI(compare, as_positional=False)
    print(comparison_report(results))


if __name__ == "__main__":
    main()
