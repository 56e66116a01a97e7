"""The adapter contract (:mod:`zoo.testing.contract`), checked for every registered method.

Every method in ``zoo.plugins.available_methods()`` gets a row with its default config,
on a model without biases (Llama) and one with (Qwen2); a method whose defaults are too
big for a tiny model gets a small config in :data:`CONFIGS`. Extra rows cover variants
(DoRA on Mistral, rsLoRA with biases on Qwen2, gradient masks, ...). A third-party
plugin runs the same checks from its own tests (``examples/ftzoo-norms/tests``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from zoo.merging import merged_adapter
from zoo.plugins import available_methods, method_hooks
from zoo.testing import CHECKS, Case, Trained, base_model
from zoo.testing.contract import _TRAINED

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "ftzoo-norms" / "src"

CONFIGS: dict[str, dict] = {
    "full": {"include": r"self_attn\.(q|v)_proj|norm"},
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "sparse": {"density": 0.05, "strategy": "random"},
}
"""Small configs for the tiny models, by registered name (others run with their defaults)."""

VARIANTS = [
    ("lora", {"r": 4, "alpha": 8, "use_rslora": True, "bias": "all"}, "qwen2"),
    ("lora", {"r": 4, "alpha": 8, "init_lora_weights": "pissa"}, "llama-gqa"),
    ("dora", {"r": 4, "alpha": 8, "target_modules": ["q_proj", "o_proj", "down_proj"]}, "mistral"),
    ("sparse", {"density": 0.05, "strategy": "gradient"}, "qwen2"),
    ("sparse", {"density": 0.05, "strategy": "weight", "grad_mode": "sampled"}, "llama-gqa"),
]
"""Extra rows: (method name, config, architecture)."""

NOT_TRAINED = {"merged"}
"""Methods that are made from other adapters rather than trained (checked on a merge result)."""
TRAINING_CHECKS = {"training_changes_trainable_only", "resume_from_selection"}


def method_classes() -> dict[str, type]:
    """Every registered method, plus the example third-party plugin when it is not installed."""
    classes = {name: entry.cls for name, entry in available_methods().items()}
    if "norms" not in classes:
        sys.path.insert(0, str(EXAMPLE_PLUGIN))
        from ftzoo_norms import NormsOnly

        classes["norms"] = NormsOnly
    return classes


CLASSES = method_classes()
CASES = [
    Case(CLASSES[name], CONFIGS.get(name, {}), arch)
    for name in sorted(CLASSES)
    for arch in ("llama-gqa", "qwen2")
    if name not in NOT_TRAINED
] + [Case(CLASSES[name], config, arch) for name, config, arch in VARIANTS if name in CLASSES]


class MergedCase(Case):
    """A ``merged`` adapter: the dense deltas of a trained LoRA, fused into a base model."""

    def __init__(self) -> None:
        super().__init__(CLASSES["merged"])

    def __str__(self) -> str:
        return "merged-llama-gqa"

    def trained(self) -> Trained:
        if "merged" not in _TRAINED:
            lora = Case(CLASSES["lora"], CONFIGS["lora"]).trained()
            deltas = lora.hooks.ftzoo_adapter_deltas(adapter=lora.adapter, model=base_model())
            adapter = merged_adapter(deltas, lora.adapter.base, info={"from": "lora"})
            method = CLASSES["merged"]()
            model, hooks = base_model(), method_hooks(method)
            hooks.ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
            _TRAINED["merged"] = Trained(method, hooks, model, adapter.selection, adapter, trainable=[])
        return _TRAINED["merged"]


def test_every_registered_method_has_a_row():
    assert set(available_methods()) - NOT_TRAINED <= {case.cls.name for case in CASES}
    assert "norms" in {case.cls.name for case in CASES}  # the example third-party plugin
    assert {case.arch for case in CASES} >= {"llama-gqa", "qwen2"}  # with and without biases


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_contract(case, check, tmp_path):
    check(case, tmp_path)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract_of_merged_adapters(check, tmp_path):
    if check.__name__ in TRAINING_CHECKS:
        pytest.skip("the merged method only combines adapters; it has no training step to test")
    if check.__name__ == "merge_matches_the_dense_merge":
        assert MergedCase().trained().hooks.ftzoo_merge_adapters(adapters=[], weights=[], options=None) is None
        pytest.skip("the merged method declines every formula: its adapters are dense deltas, merged by combine")
    check(MergedCase(), tmp_path)
