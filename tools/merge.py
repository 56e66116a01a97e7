"""Combine adapters trained on different tasks into one adapter, or one fused model folder.

All adapters must belong to the same base model. The merge is :func:`zoo.merging.merge_adapters`:
the method's own form when every adapter comes from one method that merges (S²FT's union
of column blocks, LoRA's stacked ranks), else a ``merged`` adapter of the dense deltas;
both give the update :mod:`zoo.merging.formulas` defines. The merge also reports how much
the adapters' changes overlap::

    python tools/merge.py --adapters '[runs/math/adapter, runs/code/adapter]' \\
        --how ties --density 0.2 --output merged/math+code
    python tools/merge.py --adapters '[math=runs/math/adapter, code=runs/code/adapter]' \\
        --how average --fuse true --output merged/math+code-model
"""

from __future__ import annotations

import json
from typing import Any, Literal

from zoo.adapter import META_FILE, Adapter, check_finite, save_adapter
from zoo.cli import one_line_errors
from zoo.inference import checked_deltas, fuse_into, hooks_for, load_base, parse_named, read_adapter, save_model_folder
from zoo.loading import load_tokenizer
from zoo.merging import How, MergeOptions, format_overlap, merge_adapters, overlap_report
from zoo.outputs import check_output


def merge(
    adapters: list[str],
    output: str,
    how: How = "average",
    weights: list[float] | None = None,
    density: float = 0.2,
    gamma: float = 0.01,
    scale: float = 1.0,
    seed: int = 0,
    average_over: Literal["all", "changed"] = "changed",
    fuse: bool = False,
    base_model: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    overwrite: bool = False,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Merge adapters of one base model.

    Args:
        adapters: adapter folders, as ``path`` or ``name=path`` (names label the report).
        output: the adapter folder (or, with ``fuse``, the model folder) to write; written
            atomically, so a failed merge leaves nothing behind.
        how: ``sum``, ``average``, ``task_arithmetic``, ``ties``, ``dare``, ``dare_ties`` or
            ``breadcrumbs`` (see ``zoo/merging/formulas.py``).
        weights: one weight per adapter (default: all 1).
        density: ties/dare/dare_ties/breadcrumbs: fraction of each adapter's changed
            entries that is kept.
        gamma: breadcrumbs: fraction of the largest changes masked away.
        scale: task_arithmetic/ties/dare/dare_ties/breadcrumbs: multiplier λ of the merged update.
        seed: dare/dare_ties: seed of the random drop.
        average_over: average: ``changed`` averages each entry over the adapters that
            changed it (disjoint selections keep their full update); ``all`` over all.
        fuse: write the base model with the merge fused in (a Hugging Face folder), not an adapter.
        base_model: the base model; default: the one the adapters record.
        dtype: dtype of the base weights (and of the written model).
        overwrite: replace ``output`` if it exists.
        allow_nonfinite: merge even if an adapter (or the result) holds NaN or infinity.

    Returns:
        The report: output, method of the result, sources, options, overlap.

    Raises:
        AdapterError: an adapter is missing, corrupt, of another base model, or does not fit it.
        FileExistsError: ``output`` exists and ``overwrite`` is off.
        NonFiniteError: an adapter or the result holds NaN or infinity and ``allow_nonfinite`` is off.
        ValueError: bad options (unknown ``how``, fractions outside [0, 1], wrong number of weights).
    """
    options = MergeOptions(how, density, gamma, scale, seed, average_over)
    paths = parse_named(adapters)
    if not paths:
        raise ValueError("give at least one adapter to merge")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths):
        raise ValueError(f"{len(paths)} adapters but {len(weights)} weights")
    check_output(output, overwrite, marker="config.json" if fuse else META_FILE)
    loaded = {label: read_adapter(path, allow_nonfinite=allow_nonfinite) for label, path in paths.items()}
    _check_same_base(loaded)
    model, info = load_base(base_model, loaded, dtype)

    task_vectors = [checked_deltas(hooks_for(a), a, model, f"adapter {label}") for label, a in loaded.items()]
    overlap = overlap_report(task_vectors, list(loaded))
    print(format_overlap(overlap))
    recipe = {
        "how": how,
        "options": options.as_dict(),
        "weights": weights,
        "sources": [{"name": label, "path": str(paths[label]), "method": a.method} for label, a in loaded.items()],
        "overlap": overlap,
    }
    result = merge_adapters(loaded, weights, options, model, info, task_vectors)
    result.info = {**result.info, "merge": recipe}
    del task_vectors

    if not allow_nonfinite:
        check_finite(result.tensors, what="the merged adapter")
    if fuse:
        fuse_into(model, result, what="the merged adapter")
        save_model_folder(model, load_tokenizer(info.name_or_path), output, overwrite)
    else:
        save_adapter(result, output, hooks=hooks_for(result), allow_nonfinite=allow_nonfinite)
    report = {"output": str(output), "method": result.method, "fused": fuse, **recipe}
    print(
        f"Wrote {output}: {how} of {len(loaded)} adapters as {'a fused model' if fuse else result.method + ' adapter'}"
    )
    return report


def _check_same_base(adapters: dict[str, Adapter]) -> None:
    (first_label, first), *rest = adapters.items()
    for label, adapter in rest:
        adapter.base.check_same(first.base, what=f"adapter {label} (compared with adapter {first_label})")


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    with one_line_errors():
        report = CLI(merge, as_positional=False, args=args)
    print(json.dumps({k: v for k, v in report.items() if k != "overlap"}, indent=2))


if __name__ == "__main__":
    main()
