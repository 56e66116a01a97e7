"""Fine-tune the embedded SmolLM2-135M-Instruct on generated arithmetic and compare accuracy.

Runs, in one process: ``lightning test`` on the base model, ``lightning fit``, and
``lightning test`` with the trained adapter, all from one recipe, then prints both
held-out accuracies and writes them to ``<run>/results.json``. Given the LLM-Adapters data
(``--word_problems ../shared/data/reasoning``) it also scores both models on real word problems
(AddSub, SingleEq, MultiArith; ``configs/data/word_problems.yaml``): whether the adapter learnt
arithmetic word problems or the generator's templates.
"""

from __future__ import annotations

import json
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from tools.evaluate import evaluate
from tools.plot_metrics import plot_metrics
from zoo.adapter import META_FILE
from zoo.cli import build_cli, one_line_errors
from zoo.outputs import check_output_folder
from zoo.precision import recipe_precision, slow_bf16_advice

REPO = Path(__file__).resolve().parents[1]
WORD_PROBLEMS = REPO / "configs" / "data" / "word_problems.yaml"
BASE_WORD_PROBLEMS = (
    REPO / "docs" / "results" / "studies" / "quickstart-recipes" / "word-problems-base" / "results.json"
)
"""The base model's committed outcomes on the word problems (its rambling 256-token answers take about 19
minutes on 2 cores): reused only when the items and settings match (``tools.evaluate --base_from``)."""


def _test_accuracy(config: str, *overrides: str) -> dict[str, float]:
    cli = build_cli(["test", "--config", config, "--trainer.logger", "false", *overrides])
    metrics = cli.trainer.callback_metrics
    return {k.removeprefix("test/"): round(float(v), 4) for k, v in metrics.items() if k.startswith("test/")}


def word_problem_accuracy(adapter: str, data_dir: str, output: Path) -> dict[str, Any]:
    """The base model's and ``adapter``'s accuracy on the real word problems, paired
    (``configs/data/word_problems.yaml``, its chat prompt being the quickstart's); the base
    model's outcomes come from :data:`BASE_WORD_PROBLEMS` when they were scored the same way."""
    from datamodules import ReasoningDataModule

    spec = yaml.safe_load(WORD_PROBLEMS.read_text())["init_args"]
    data = ReasoningDataModule(**{**spec, "data_dir": data_dir})
    base_from = str(BASE_WORD_PROBLEMS) if BASE_WORD_PROBLEMS.is_file() else None
    results = evaluate(data, adapters=[f"fine_tuned={adapter}"], output=str(output), overwrite=True,
                       title="Real word problems (AddSub, SingleEq, MultiArith)", base_from=base_from)  # fmt: skip
    return {entry: results["scores"][entry]["pooled"] for entry in results["entries"]} | {
        "mcnemar": results["mcnemar"], "items": results["items"]}  # fmt: skip


def quickstart(
    recipe: str = "configs/quickstart.yaml",
    run_dir: str = "runs/quickstart",
    overrides: list[str] | None = None,
    word_problems: str | None = None,
) -> dict:
    """Measure base accuracy, fine-tune, measure again.

    Args:
        recipe: the ``lightning fit`` config (model, method, data, trainer); not ``--config``, which
            is this command's own config file, as for every jsonargparse command line.
        run_dir: where the run's logs, checkpoint, adapter and results go.
        overrides: more ``lightning`` arguments for all three steps, e.g. another method on the same
            budget: ``[--config, configs/methods/lora.yaml, --model.optimizer.init_args.lr, "1e-3"]``.
        word_problems: the LLM-Adapters data folder (``../shared/data/reasoning``): also score the
            base and the adapter on its AddSub, SingleEq and MultiArith test sets (in ``<run>/word_problems``).
    """
    run = Path(run_dir)
    extra = [*(overrides or []), "--trainer.default_root_dir", str(run)]
    precision = recipe_precision(recipe, extra)
    advice = slow_bf16_advice(precision)
    if advice is not None:  # the recipe's bf16 autocast would take hours on this CPU, not minutes
        print(f"{advice}; the quickstart runs in float32 (--trainer.precision 32-true)", file=sys.stderr)
        precision = "32-true"
        extra += ["--trainer.precision", precision]
    overwrite = any(a == "--model.overwrite" and b.lower() == "true" for a, b in pairwise(extra))
    # An earlier run's adapter is refused now, not by fit after the base model's test.
    check_output_folder(run / "adapter", overwrite, META_FILE, flag="--model.overwrite true in --overrides")
    started = time.monotonic()
    base = _test_accuracy(recipe, *extra)
    fit_started = time.monotonic()
    fit = build_cli(["fit", "--config", recipe, *extra,
                     "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "logs",
                     "--model.adapter_dir", str(run / "adapter")])  # fmt: skip
    fit_minutes = (time.monotonic() - fit_started) / 60
    tuned = _test_accuracy(recipe, *extra, "--model.adapter", str(run / "adapter"))
    results = {
        "method": type(fit.model.method).__name__,
        "trainable_parameters": fit.model.trainable_parameter_count,
        "base_parameters": fit.model.base_parameter_count,
        "trainable_ratio": fit.model.trainable_parameter_count / fit.model.base_parameter_count,
        "steps": fit.trainer.global_step,
        "overrides": overrides or [],
        "precision": precision,
        "fit_minutes": round(fit_minutes, 2),
        "total_minutes": round((time.monotonic() - started) / 60, 2),
        "base": base,
        "fine_tuned": tuned,
        "adapter": str(run / "adapter"),
        "loss_plot": str(plot_metrics(str(run / "logs"))),
    }
    if word_problems is not None:
        results["word_problems"] = word_problem_accuracy(str(run / "adapter"), word_problems, run / "word_problems")
        results["total_minutes"] = round((time.monotonic() - started) / 60, 2)
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nHeld-out accuracy on generated arithmetic ({results['method']}, "
        f"{results['trainable_ratio']:.2%} of parameters trained, {results['steps']} steps, "
        f"{results['fit_minutes']:.1f} min):\n"
        f"  base model   {base.get('acc', float('nan')):7.2%}\n"
        f"  fine-tuned   {tuned.get('acc', float('nan')):7.2%}\n"
        f"Adapter: {results['adapter']}   Results: {run / 'results.json'}   Loss curve: {results['loss_plot']}"
    )
    if word_problems is not None:
        real = results["word_problems"]
        print(f"Real word problems (AddSub, SingleEq, MultiArith; {sum(real['items'].values())} items):\n"
              + "\n".join(f"  {name:12} {real[name]['accuracy']:7.2%} (95% interval {real[name]['low']:.1%}-"
                          f"{real[name]['high']:.1%})" for name in ("base", "fine_tuned"))
              + f"\n  paired McNemar p = {real['mcnemar'][0]['p_value']:.3g}")  # fmt: skip
    return results


def main() -> None:
    from jsonargparse import CLI

    with one_line_errors():
        CLI(quickstart, as_positional=False)


if __name__ == "__main__":
    main()
