"""tools/merge.py: merged adapters equal the formulas applied to the task vectors; bad input is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stub_methods import Complete
from tiny_adapters import METHODS, column_deltas

from tools.merge import merge
from zoo.adapter import TENSORS_FILE, Adapter, AdapterError, load_adapter, save_adapter
from zoo.hookspecs import hookimpl
from zoo.inference import checked_deltas, hooks_for
from zoo.merging import MergeOptions, combine, merged_adapter


def task_vectors(tiny, paths):
    model = tiny.fresh()
    out = []
    for path in paths:
        adapter = load_adapter(path)
        out.append(checked_deltas(hooks_for(adapter), adapter, model, str(path)))
    return out


@pytest.mark.parametrize("how", ["sum", "average", "task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs"])
def test_merge_equals_the_formulas_on_the_task_vectors(tiny, tmp_path, how):
    paths = [tiny.saved("full", tmp_path / "a", seed=0), tiny.saved("merged", tmp_path / "b", seed=1)]
    options = dict(how=how, density=0.5, gamma=0.05, scale=0.8, seed=3)
    report = merge([str(p) for p in paths], str(tmp_path / "out"), weights=[1.0, 0.5], **options)
    merged = load_adapter(tmp_path / "out")
    assert merged.method == "merged" and report["method"] == "merged"
    assert merged.info["merge"]["how"] == how and [s["method"] for s in merged.info["merge"]["sources"]] == [
        "full",
        "merged",
    ]
    expected = combine(task_vectors(tiny, paths), [1.0, 0.5], MergeOptions(**options))
    assert sorted(merged.tensors) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged.tensors[name], tensor)


def test_disjoint_column_selections_average_into_their_union(tiny, tmp_path):
    model = tiny.fresh()
    a = column_deltas(model, seed=0)
    b = {k: torch.zeros_like(v) for k, v in a.items()}
    for name, delta in a.items():  # b changes other columns than a
        cols = (delta != 0).any(0).nonzero().squeeze(1)
        free = [c for c in range(delta.shape[1]) if c not in cols.tolist()][:3]
        b[name][:, free] = 0.1
    for label, deltas in (("a", a), ("b", b)):
        save_adapter(merged_adapter(deltas, tiny.info), tmp_path / label)
    report = merge([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"], str(tmp_path / "avg"), how="average")
    assert report["overlap"]["pairs"][0]["disjoint"]
    merged = load_adapter(tmp_path / "avg")
    for name in a:
        torch.testing.assert_close(merged.tensors[name], a[name] + b[name])  # nothing halved


def test_merge_can_write_a_fused_model_folder(tiny, tmp_path):
    paths = [tiny.saved("merged", tmp_path / "a", seed=0), tiny.saved("merged", tmp_path / "b", seed=1)]
    merge([str(p) for p in paths], str(tmp_path / "model"), how="sum", fuse=True)
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    deltas = task_vectors(tiny, paths)
    name = next(iter(deltas[0]))
    expected = tiny.model.get_parameter(name) + deltas[0][name] + deltas[1].get(name, 0)
    torch.testing.assert_close(weights[name], expected)
    assert (tmp_path / "model" / "tokenizer.json").exists() or (tmp_path / "model" / "tokenizer_config.json").exists()


class SelfMerging(Complete):
    """A method that merges in its own form (as S²FT does for sum/average)."""

    name = "self-merging"

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {k: v.clone() for k, v in adapter.tensors.items()}

    @hookimpl
    def ftzoo_merge_adapters(self, adapters, weights, options):
        if options.how != "sum":
            return None
        names = adapters[0].tensors
        tensors = {k: sum(w * a.tensors[k] for a, w in zip(adapters, weights)) for k in names}
        return Adapter("self-merging", {}, None, adapters[0].base, tensors)


def test_a_method_that_merges_in_its_own_form_keeps_its_method(tiny, tmp_path, monkeypatch):
    from zoo import plugins

    monkeypatch.setitem(
        plugins._REGISTERED, "self-merging", plugins.MethodEntry("self-merging", SelfMerging, "test", "")
    )
    plugins.available_methods.cache_clear()
    try:
        deltas = column_deltas(tiny.model, seed=0)
        for label, scale in (("a", 1.0), ("b", 2.0)):
            tensors = {k: scale * v for k, v in deltas.items()}
            save_adapter(Adapter("self-merging", {}, None, tiny.info, tensors), tmp_path / label)
        paths = [str(tmp_path / "a"), str(tmp_path / "b")]
        assert merge(paths, str(tmp_path / "sum"), how="sum")["method"] == "self-merging"
        name = next(iter(deltas))
        torch.testing.assert_close(load_adapter(tmp_path / "sum").tensors[name], 3.0 * deltas[name])
        assert merge(paths, str(tmp_path / "ties"), how="ties")["method"] == "merged"  # declined: dense fallback
    finally:
        plugins.available_methods.cache_clear()


# ---------------------------------------------------------------- refusing bad input


def corrupt(folder: Path) -> Path:
    data = (folder / TENSORS_FILE).read_bytes()
    (folder / TENSORS_FILE).write_bytes(data[: len(data) // 3])
    return folder


@pytest.mark.parametrize(
    ("make_second", "error", "message"),
    [
        (lambda tiny, other, tmp: tmp / "missing", AdapterError, "no such adapter folder"),
        (
            lambda tiny, other, tmp: corrupt(tiny.saved("merged", tmp / "c", 1)),
            AdapterError,
            "adapter.safetensors: its SHA-256 is .*changed or damaged",
        ),
        (lambda tiny, other, tmp: other.saved("merged", tmp / "o", 1), AdapterError, "other weights"),
        (
            lambda tiny, other, tmp: save_adapter(
                merged_adapter({"model.layers.0.mlp.down_proj.weight": torch.ones(3, 3)}, tiny.info), tmp / "s"
            ),
            AdapterError,
            r"shape \[3, 3\]",
        ),
    ],
    ids=["missing", "corrupt", "other-base", "shapes"],
)
def test_merge_refuses_bad_adapters_and_writes_nothing(tiny, other_base, tmp_path, make_second, error, message):
    first = tiny.saved("merged", tmp_path / "a", seed=0)
    second = make_second(tiny, other_base, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        merge([str(first), str(second)], str(out))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_merge_refuses_bad_options_and_existing_output(tiny, tmp_path):
    paths = [str(tiny.saved("merged", tmp_path / "a", seed=0)), str(tiny.saved("merged", tmp_path / "b", seed=1))]
    with pytest.raises(ValueError, match="2 adapters but 1 weights"):
        merge(paths, str(tmp_path / "out"), weights=[1.0])
    with pytest.raises(ValueError, match="unknown merge method"):
        merge(paths, str(tmp_path / "out"), how="slerp")
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists"):
        merge(paths, str(tmp_path / "taken"))
    with pytest.raises(FileExistsError, match="holds no adapter.json"):
        merge(paths, str(tmp_path / "taken"), overwrite=True)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("method", METHODS)
def test_sum_of_two_adapters_of_every_method_equals_the_dense_sum(tiny, tmp_path, method):
    paths = [tiny.saved(method, tmp_path / "a", 0), tiny.saved(method, tmp_path / "b", 1)]
    report = merge([str(p) for p in paths], str(tmp_path / "sum"), how="sum", weights=[1.0, 0.5])
    merged = load_adapter(tmp_path / "sum")
    assert report["method"] == merged.method  # the method's own form, or "merged"
    got = checked_deltas(hooks_for(merged), merged, tiny.fresh(), "merged")
    expected = combine(task_vectors(tiny, paths), [1.0, 0.5], MergeOptions("sum"))
    for name in set(got) | set(expected):
        torch.testing.assert_close(
            got.get(name, torch.zeros_like(expected.get(name, got.get(name)))),
            expected.get(name, torch.zeros_like(got[name])),
            msg=name,
        )


def test_command_line_runs_the_same_function(tiny, tmp_path):
    from jsonargparse import CLI

    a, b = tiny.saved("merged", tmp_path / "a", 0), tiny.saved("merged", tmp_path / "b", 1)
    args = ["--adapters", f"[x={a}, y={b}]", "--how", "ties", "--density", "0.5", "--output", str(tmp_path / "out")]
    report = CLI(merge, args=args, as_positional=False)
    assert report["how"] == "ties" and [s["name"] for s in report["sources"]] == ["x", "y"]
    assert load_adapter(tmp_path / "out").info["merge"]["options"]["density"] == 0.5
