"""Plot a run's training loss (and validation metrics) from Lightning's ``metrics.csv``."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def read_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Metric name → ``(step, value)`` pairs, from a CSVLogger ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name not in ("step", "epoch") and value:
                    series[name].append((int(row["step"]), float(value)))
    return dict(series)


def plot_metrics(run_dir: str, output: str | None = None) -> Path:
    """Write a PNG of the loss curves (and accuracies) of a run.

    Args:
        run_dir: a CSVLogger version folder (holding ``metrics.csv``), or a folder above one
            (the newest ``metrics.csv`` below it is used).
        output: PNG path; default ``<folder of metrics.csv>/metrics.png``.
    """
    found = sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:  # before matplotlib (an optional extra) is needed
        raise FileNotFoundError(f"{run_dir}: no metrics.csv below it (log with CSVLogger)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(found[-1])
    losses = {k: v for k, v in series.items() if k.endswith("loss")}
    accuracies = {k: v for k, v in series.items() if "/acc" in k}
    fig, axes = plt.subplots(1, 2 if accuracies else 1, figsize=(11 if accuracies else 6, 4), squeeze=False)
    for name, points in losses.items():
        axes[0][0].plot(*zip(*points), label=name, marker="o" if len(points) < 20 else None)
    axes[0][0].set(xlabel="optimizer step", ylabel="loss", title="loss")
    axes[0][0].legend()
    if accuracies:
        for name, points in accuracies.items():
            axes[0][1].plot(*zip(*points), label=name, marker="o")
        axes[0][1].set(xlabel="optimizer step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
        axes[0][1].legend()
    fig.tight_layout()
    path = Path(output) if output else found[-1].with_name("metrics.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    from jsonargparse import CLI

    from zoo.cli import one_line_errors  # here: the plot itself needs neither torch nor Lightning

    with one_line_errors():
        print(CLI(plot_metrics, as_positional=False))


if __name__ == "__main__":
    main()
