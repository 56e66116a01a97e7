"""Fine-tune the embedded SmolLM2-135M-Instruct on generated arithmetic and compare accuracy.

Runs, in one process: ``lightning test`` on the base model, ``lightning fit``, and
``lightning test`` with the trained adapter, all from one recipe, then prints both
held-out accuracies and writes them to ``<run>/results.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tools.plot_metrics import plot_metrics
from zoo.cli import build_cli


def _test_accuracy(config: str, *overrides: str) -> dict[str, float]:
    cli = build_cli(["test", "--config", config, "--trainer.logger", "false", *overrides])
    metrics = cli.trainer.callback_metrics
    return {k.removeprefix("test/"): round(float(v), 4) for k, v in metrics.items() if k.startswith("test/")}


def quickstart(
    config: str = "configs/quickstart.yaml",
    run_dir: str = "runs/quickstart",
    overrides: list[str] | None = None,
) -> dict:
    """Measure base accuracy, fine-tune, measure again.

    Args:
        config: the recipe (model, method, data, trainer).
        run_dir: where the run's logs, checkpoint, adapter and results go.
        overrides: more ``lightning`` arguments for all three steps, e.g. another method on the same
            budget: ``[--config, configs/methods/lora.yaml, --model.optimizer.init_args.lr, "1e-3"]``.
    """
    run = Path(run_dir)
    extra = [*(overrides or []), "--trainer.default_root_dir", str(run)]
    started = time.monotonic()
    base = _test_accuracy(config, *extra)
    fit_started = time.monotonic()
    fit = build_cli(["fit", "--config", config, *extra,
                     "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "logs",
                     "--model.adapter_dir", str(run / "adapter")])  # fmt: skip
    fit_minutes = (time.monotonic() - fit_started) / 60
    tuned = _test_accuracy(config, *extra, "--model.adapter", str(run / "adapter"))
    results = {
        "method": type(fit.model.method).__name__,
        "trainable_parameters": fit.model.trainable_parameter_count,
        "base_parameters": fit.model.base_parameter_count,
        "trainable_ratio": fit.model.trainable_parameter_count / fit.model.base_parameter_count,
        "steps": fit.trainer.global_step,
        "overrides": overrides or [],
        "fit_minutes": round(fit_minutes, 2),
        "total_minutes": round((time.monotonic() - started) / 60, 2),
        "base": base,
        "fine_tuned": tuned,
        "adapter": str(run / "adapter"),
        "loss_plot": str(plot_metrics(str(run / "logs"))),
    }
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nHeld-out accuracy on generated arithmetic ({results['method']}, "
        f"{results['trainable_ratio']:.2%} of parameters trained, {results['steps']} steps, "
        f"{results['fit_minutes']:.1f} min):\n"
        f"  base model   {base.get('acc', float('nan')):7.2%}\n"
        f"  fine-tuned   {tuned.get('acc', float('nan')):7.2%}\n"
        f"Adapter: {results['adapter']}   Results: {run / 'results.json'}   Loss curve: {results['loss_plot']}"
    )
    return results


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(quickstart, as_positional=False)
