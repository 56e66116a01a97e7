"""The adapter contract every method fulfils, as checks a plugin's own tests can run.

Each check takes a :class:`Case` (a method trained for a few steps on a tiny model by
:func:`zoo.testing.harness.train`) and a temporary folder, and fails with an assertion
that names what the method got wrong. A check that does not apply to a method (it merges
only as dense deltas, it adds no parameters) skips with the reason, through pytest.

=====================================  ==========================================================
check                                  what it proves
=====================================  ==========================================================
``training_changes_trainable_only``    training changed the outputs, only through what the
                                       method named; parameters it added carry its ``prefix``
``selection_is_json``                  the selection survives JSON (checkpoints, adapters)
``save_load_roundtrip``                ``save_adapter`` → ``load_adapter`` keeps everything
``load_gives_trained_outputs``         ``ftzoo_load_adapter`` on a fresh base = the trained model
``fuse_then_unfuse``                   fuse = the trained model; unfuse restores the base bit for bit
``deltas_are_fused_minus_base``        ``ftzoo_adapter_deltas`` are base names, shapes, dtypes
                                       and equal ``fused - base``
``resume_from_selection``              selection + trainable state (a checkpoint) = the same model
``merge_matches_the_dense_merge``      the method's own merge equals :func:`zoo.merging.combine`
                                       of the dense deltas, for every formula it accepts
``serving_matches_fused``              mixed-batch serving (``ftzoo_serving_deltas``) = fused
                                       rows, base rows untouched
``export_loads_without_ftzoo``         the exported folder loads with transformers alone and
                                       gives the trained outputs
=====================================  ==========================================================

Run it from a plugin's tests (``examples/ftzoo-norms/tests/test_contract.py``)::

    from zoo.testing import CHECKS, Case

    CASES = [Case(NormsOnly), Case(NormsOnly, {"biases": True}, arch="qwen2")]

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_contract(case, check, tmp_path):
        check(case, tmp_path)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.adapter import load_adapter, save_adapter
from zoo.inference import MixedAdapterModel, fuse_into, save_model_folder
from zoo.merging import MergeOptions, combine
from zoo.method import Method
from zoo.plugins import available_methods, method_hooks, register_method
from zoo.testing.harness import Trained, base_model, batches, logits, train
from zoo.testing.models import tiny_tokenizer

BATCH = batches(count=1, seed=7)[0]
MERGES = [
    MergeOptions("sum"),
    MergeOptions("task_arithmetic", scale=0.5),
    MergeOptions("average", average_over="all"),
    MergeOptions("average", average_over="changed"),
    MergeOptions("ties", density=0.5),
    MergeOptions("dare", density=0.5, seed=1),
    MergeOptions("breadcrumbs", density=0.5, gamma=0.1),
]
"""Every formula the merge tool offers; a method's own merge must match each it accepts."""


@dataclass
class Case:
    """A method, its config and the tiny architecture it is checked on (``qwen2`` has biases)."""

    cls: type[Method]
    config: dict[str, Any] = field(default_factory=dict)
    arch: str = "llama-gqa"
    steps: int = 3

    def __str__(self) -> str:
        return f"{self.cls.name or self.cls.__name__}-{self.arch}" + (f"-{json.dumps(self.config)}" if self.config else "")

    def trained(self) -> Trained:
        """Train once per session (every check of the case reuses it)."""
        key = (self.cls, json.dumps(self.config, sort_keys=True, default=str), self.arch, self.steps)
        if key not in _TRAINED:
            if self.cls.name and self.cls.name not in available_methods():
                register_method(self.cls)  # tools rebuild methods by registered name
            _TRAINED[key] = train(self.cls(**self.config), arch=self.arch, steps=self.steps)
        return _TRAINED[key]

    def fresh(self) -> torch.nn.Module:
        return base_model(self.arch)


_TRAINED: dict[tuple, Trained] = {}


def _skip(reason: str) -> None:
    import pytest

    pytest.skip(reason)


def _same_logits(model: torch.nn.Module, trained: Trained) -> None:
    torch.testing.assert_close(logits(model, BATCH), logits(trained.model, BATCH), rtol=1e-5, atol=2e-5)


def _rebuilt_hooks(trained: Trained) -> Any:
    """Hooks of the method rebuilt from the adapter's stored config, as tools do."""
    return method_hooks(type(trained.method)(**trained.adapter.config))


def training_changes_trainable_only(case: Case, tmp_path: Path) -> None:
    trained, base = case.trained(), case.fresh()
    assert not torch.allclose(logits(trained.model, BATCH), logits(base, BATCH), atol=1e-4), "training changed nothing"
    assert trained.trainable, "the method selected nothing to train"
    assert all(p.requires_grad for _, p in trained.trainable)
    trainable = {name for name, _ in trained.trainable}
    assert not trainable & {name for name, p in trained.model.named_parameters() if not p.requires_grad}


def selection_is_json(case: Case, tmp_path: Path) -> None:
    trained = case.trained()
    assert json.loads(json.dumps(trained.selection)) == trained.selection


def save_load_roundtrip(case: Case, tmp_path: Path) -> None:
    trained = case.trained()
    loaded = load_adapter(save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks))
    assert (loaded.method, loaded.config, loaded.selection) == (
        trained.adapter.method,
        json.loads(json.dumps(trained.adapter.config)),
        trained.selection,
    )
    assert loaded.tensors.keys() == trained.adapter.tensors.keys()
    for name, tensor in trained.adapter.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name


def load_gives_trained_outputs(case: Case, tmp_path: Path) -> None:
    trained = case.trained()
    loaded = load_adapter(save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks))
    model = case.fresh()
    assert method_hooks(type(trained.method)(**loaded.config)).ftzoo_load_adapter(model=model, adapter=loaded)
    _same_logits(model, trained)


def fuse_then_unfuse(case: Case, tmp_path: Path) -> None:
    trained, hooks = case.trained(), _rebuilt_hooks(case.trained())
    model, base = case.fresh(), case.fresh()
    undo = hooks.ftzoo_fuse_adapter(model=model, adapter=trained.adapter, scale=1.0)
    _same_logits(model, trained)
    assert hooks.ftzoo_unfuse_adapter(model=model, adapter=trained.adapter, undo=undo)
    for (name, p), (_, q) in zip(model.named_parameters(), base.named_parameters()):
        assert torch.equal(p, q), f"{name} not restored exactly"


def deltas_are_fused_minus_base(case: Case, tmp_path: Path) -> None:
    trained, hooks, model = case.trained(), _rebuilt_hooks(case.trained()), case.fresh()
    params = dict(model.named_parameters())
    deltas = hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=model)
    assert deltas and set(deltas) <= set(params), sorted(set(deltas) - set(params))[:5]
    for name, delta in deltas.items():
        assert delta.shape == params[name].shape and delta.dtype == params[name].dtype, name
    assert any(bool(d.any()) for d in deltas.values())
    base = {name: p.detach().clone() for name, p in params.items()}
    hooks.ftzoo_fuse_adapter(model=model, adapter=trained.adapter, scale=1.0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - base[name], deltas.get(name, torch.zeros_like(p)), rtol=0, atol=1e-6)


def resume_from_selection(case: Case, tmp_path: Path) -> None:
    trained = case.trained()
    hooks = method_hooks(type(trained.method)(**trained.method.config()))
    model = case.fresh()
    hooks.ftzoo_rewrite_model(model=model, selection=json.loads(json.dumps(trained.selection)))
    state = {name: p.detach().clone() for name, p in trained.trainable}  # what a checkpoint holds
    resumed = dict(hooks.ftzoo_trainable_parameters(model=model))
    assert resumed.keys() == state.keys()
    with torch.no_grad():
        for name, tensor in state.items():
            resumed[name].copy_(tensor)
    model.eval()
    _same_logits(model, trained)


def merge_matches_the_dense_merge(case: Case, tmp_path: Path) -> None:
    trained, hooks, model = case.trained(), _rebuilt_hooks(case.trained()), case.fresh()
    other = Case(case.cls, case.config, case.arch, steps=case.steps + 1).trained().adapter
    adapters, weights = [trained.adapter, other], [0.7, 0.4]
    dense = [hooks.ftzoo_adapter_deltas(adapter=a, model=model) for a in adapters]
    accepted = []
    for options in MERGES:
        merged = hooks.ftzoo_merge_adapters(adapters=adapters, weights=weights, options=options)
        if merged is None:
            continue  # declined: the merge tool merges the dense deltas itself
        accepted.append(options.how)
        expected = combine(dense, weights, options)
        got = hooks.ftzoo_adapter_deltas(adapter=merged, model=model)
        for name in set(expected) | set(got):
            want = expected.get(name, torch.zeros_like(got.get(name, model.get_parameter(name))))
            have = got.get(name, torch.zeros_like(want))
            torch.testing.assert_close(have.float(), want.float(), rtol=1e-4, atol=1e-6, msg=f"{options}: {name}")
    if not accepted:
        _skip(f"{case.cls.__name__} declines every merge formula: adapters merge as dense deltas (zoo.merging.combine)")


def serving_matches_fused(case: Case, tmp_path: Path) -> None:
    trained = case.trained()
    model = case.fresh()
    server = MixedAdapterModel(model, trained.adapter.base)
    server.add_adapter("a", trained.adapter)
    with server.assign(["a", None]):
        served = logits(model, BATCH)
    fused = case.fresh()
    fuse_into(fused, trained.adapter, "the adapter")
    torch.testing.assert_close(served[0], logits(fused, BATCH)[0], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(served[1], logits(case.fresh(), BATCH)[1], rtol=1e-5, atol=1e-6)


def export_loads_without_ftzoo(case: Case, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    trained, model = case.trained(), case.fresh()
    fuse_into(model, trained.adapter, "the adapter")
    folder = save_model_folder(model, tiny_tokenizer(), tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    _same_logits(exported, trained)


CHECKS: list[Callable[[Case, Path], None]] = [
    training_changes_trainable_only,
    selection_is_json,
    save_load_roundtrip,
    load_gives_trained_outputs,
    fuse_then_unfuse,
    deltas_are_fused_minus_base,
    resume_from_selection,
    merge_matches_the_dense_merge,
    serving_matches_fused,
    export_loads_without_ftzoo,
]
"""Every check, in the order a method's life goes (train → save → load → fuse → merge → serve → export)."""
