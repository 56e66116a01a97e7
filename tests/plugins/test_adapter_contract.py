"""The adapter contract, checked for every registered method (à la PEFT's ``PeftCommonTester``).

Each row of :data:`TEST_CASES` trains a method for a few steps on a tiny model (the hooks
called in ``zoo/module.py``'s order, see ``method_harness.train``) and then checks:

* training changed the outputs, and only the method's trainable state;
* the selection is JSON-able; ``save_adapter`` → ``load_adapter`` keeps everything;
* ``ftzoo_load_adapter`` on a fresh base computes what the trained model computed;
* ``ftzoo_fuse_adapter`` on a fresh base does too, and ``ftzoo_unfuse_adapter`` restores the
  base exactly (bit for bit);
* ``ftzoo_adapter_deltas`` are keyed by base parameter names, with their shapes and dtypes,
  and equal ``fused - base``;
* rebuilding from the selection plus the trainable state (what a checkpoint holds) resumes
  the same model;
* ``ftzoo_merge_adapters`` of an adapter with itself (an average) is that adapter, or declines.

Every method in ``zoo.plugins.available_methods()`` gets a row with its default config; a new
method needs nothing here unless its defaults are too big for a tiny model, in which case it
adds an entry to :data:`CONFIGS`. Extra rows cover variants (DoRA on Mistral, rsLoRA with
biases on Qwen2, gradient masks, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from method_harness import Trained, base_model, batches, logits, train

from zoo import Adapter, load_adapter, save_adapter
from zoo.merging import MergeOptions
from zoo.plugins import available_methods, method_hooks

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "ftzoo-norms" / "src"

CONFIGS: dict[str, dict] = {
    "full": {"include": r"self_attn\.(q|v)_proj|norm"},
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "sparse": {"density": 0.05, "strategy": "random"},
}
"""Small configs for the tiny models, by registered name (others run with their defaults)."""

VARIANTS = [
    ("lora-rslora-bias", "lora", {"r": 4, "alpha": 8, "use_rslora": True, "bias": "all"}, "qwen2"),
    ("lora-pissa", "lora", {"r": 4, "alpha": 8, "init_lora_weights": "pissa"}, "llama-gqa"),
    ("dora-mistral", "dora", {"r": 4, "alpha": 8, "target_modules": ["q_proj", "o_proj", "down_proj"]}, "mistral"),
    ("sparse-gradient", "sparse", {"density": 0.05, "strategy": "gradient"}, "qwen2"),
    ("sparse-weight-sampled", "sparse", {"density": 0.05, "strategy": "weight", "grad_mode": "sampled"}, "llama-gqa"),
    ("norms-biases", "norms", {"biases": True}, "qwen2"),
]
"""Extra rows: (id, method name, config, architecture)."""

NOT_TRAINED = {"merged"}
"""Methods that are made from other adapters rather than trained (checked on a merge result)."""


def method_classes() -> dict[str, type]:
    """Every registered method, plus the example third-party plugin when it is not installed."""
    classes = {name: entry.cls for name, entry in available_methods().items()}
    if "norms" not in classes:
        sys.path.insert(0, str(EXAMPLE_PLUGIN))
        from ftzoo_norms import NormsOnly

        classes["norms"] = NormsOnly
    return classes


CLASSES = method_classes()
TEST_CASES = [(name, name, CONFIGS.get(name, {}), "llama-gqa") for name in sorted(CLASSES)] + [
    row for row in VARIANTS if row[1] in CLASSES
]
IDS = [row[0] for row in TEST_CASES]

_RESULTS: dict[str, Trained] = {}


def _make(case_id: str) -> Trained:
    """Train the row once per session (every test of the row reuses it)."""
    if case_id not in _RESULTS:
        _, name, config, arch = next(row for row in TEST_CASES if row[0] == case_id)
        if name in NOT_TRAINED:
            _RESULTS[case_id] = _made_by_merge(name)
        else:
            _RESULTS[case_id] = train(CLASSES[name](**config), arch=arch)
            _RESULTS[case_id].adapter.method = name
    return _RESULTS[case_id]


def _made_by_merge(name: str) -> Trained:
    """A ``merged`` adapter: the dense deltas of a trained LoRA, applied on a base model."""
    from zoo.merging import merged_adapter

    lora = _make("lora")
    deltas = lora.hooks.ftzoo_adapter_deltas(adapter=lora.adapter, model=base_model())
    adapter = merged_adapter(deltas, lora.adapter.base, info={"from": "lora"})
    method = CLASSES[name](**adapter.config)
    model = base_model()
    hooks = method_hooks(method)
    hooks.ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    return Trained(method, hooks, model, adapter.selection, adapter, trainable=[])


def _arch(case_id: str) -> str:
    return next(row[3] for row in TEST_CASES if row[0] == case_id)


BATCH = batches(count=1, seed=7)[0]


@pytest.fixture(params=IDS)
def case(request) -> tuple[str, Trained]:
    return request.param, _make(request.param)


def _fresh(case_id: str):
    return base_model(_arch(case_id))


def _hooks_for(adapter: Adapter, trained: Trained):
    """Hooks of a method rebuilt from the adapter's stored config, as tools do."""
    return method_hooks(type(trained.method)(**adapter.config))


def _assert_same_logits(model, trained: Trained) -> None:
    torch.testing.assert_close(logits(model, BATCH), logits(trained.model, BATCH), rtol=1e-5, atol=2e-5)


def test_every_registered_method_has_a_row():
    assert set(available_methods()) <= {row[1] for row in TEST_CASES}
    assert "norms" in {row[1] for row in TEST_CASES}  # the example third-party plugin


def test_training_changed_outputs_through_trainable_state_only(case):
    case_id, trained = case
    if trained.method.name in NOT_TRAINED:
        pytest.skip("the merged method only combines adapters; it has no training step to test")
    base = _fresh(case_id)
    assert not torch.allclose(logits(trained.model, BATCH), logits(base, BATCH), atol=1e-4)
    assert trained.trainable, "the method selected nothing to train"
    assert all(p.requires_grad for _, p in trained.trainable)
    trainable = {name for name, _ in trained.trainable}
    frozen_now = {name for name, p in trained.model.named_parameters() if not p.requires_grad}
    assert not trainable & frozen_now
    if trained.method.prefix:  # parameters the method added carry its prefix
        base_names = {name for name, _ in base.named_parameters()}
        added = trainable - base_names
        assert all(trained.method.prefix in name for name in added if not name.endswith(".bias")), added


def test_selection_is_json(case):
    _, trained = case
    assert json.loads(json.dumps(trained.selection)) == trained.selection


def test_save_load_roundtrip(case, tmp_path):
    _, trained = case
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    loaded = load_adapter(folder)
    assert (loaded.method, loaded.config, loaded.selection) == (
        trained.adapter.method,
        json.loads(json.dumps(trained.adapter.config)),
        trained.selection,
    )
    assert loaded.tensors.keys() == trained.adapter.tensors.keys()
    for name, tensor in trained.adapter.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name


def test_load_into_fresh_base_gives_trained_outputs(case, tmp_path):
    case_id, trained = case
    loaded = load_adapter(save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks))
    model = _fresh(case_id)
    assert _hooks_for(loaded, trained).ftzoo_load_adapter(model=model, adapter=loaded)
    _assert_same_logits(model, trained)


def test_fuse_gives_trained_outputs_and_unfuse_restores_base_exactly(case):
    case_id, trained = case
    hooks = _hooks_for(trained.adapter, trained)
    model, base = _fresh(case_id), _fresh(case_id)
    undo = hooks.ftzoo_fuse_adapter(model=model, adapter=trained.adapter, scale=1.0)
    _assert_same_logits(model, trained)
    assert hooks.ftzoo_unfuse_adapter(model=model, adapter=trained.adapter, undo=undo)
    for (name, p), (_, q) in zip(model.named_parameters(), base.named_parameters()):
        assert torch.equal(p, q), f"{name} not restored exactly"


def test_deltas_are_base_parameters_and_equal_fused_minus_base(case):
    case_id, trained = case
    hooks = _hooks_for(trained.adapter, trained)
    model = _fresh(case_id)
    params = dict(model.named_parameters())
    deltas = hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=model)
    assert deltas and set(deltas) <= set(params)
    for name, delta in deltas.items():
        assert delta.shape == params[name].shape and delta.dtype == params[name].dtype, name
    assert any(bool(d.any()) for d in deltas.values())
    base = {name: p.detach().clone() for name, p in params.items()}
    hooks.ftzoo_fuse_adapter(model=model, adapter=trained.adapter, scale=1.0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - base[name], deltas.get(name, torch.zeros_like(p)), rtol=0, atol=1e-6)


def test_resume_from_selection_and_trainable_state(case):
    case_id, trained = case
    if trained.method.name in NOT_TRAINED:
        pytest.skip("the merged method only combines adapters; it has no training step to test")
    hooks = method_hooks(type(trained.method)(**trained.method.config()))
    model = _fresh(case_id)
    hooks.ftzoo_rewrite_model(model=model, selection=json.loads(json.dumps(trained.selection)))
    state = {name: p.detach().clone() for name, p in trained.trainable}  # what a checkpoint holds
    resumed = dict(hooks.ftzoo_trainable_parameters(model=model))
    assert resumed.keys() == state.keys()
    with torch.no_grad():
        for name, tensor in state.items():
            resumed[name].copy_(tensor)
    model.eval()
    _assert_same_logits(model, trained)


def test_merge_with_itself_is_itself_or_declines(case):
    case_id, trained = case
    hooks = _hooks_for(trained.adapter, trained)
    options = MergeOptions("average", average_over="all")
    merged = hooks.ftzoo_merge_adapters(
        adapters=[trained.adapter, trained.adapter], weights=[1.0, 1.0], options=options
    )
    if merged is None:
        return
    model = _fresh(case_id)
    expected = hooks.ftzoo_adapter_deltas(adapter=trained.adapter, model=model)
    got = hooks.ftzoo_adapter_deltas(adapter=merged, model=model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
