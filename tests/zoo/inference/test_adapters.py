"""``lightning validate/test/predict --model.adapter``: the adapter names its method."""

from __future__ import annotations

from plugins.full import FullFineTuning
from plugins.s2ft import S2FT
from zoo.adapter import BaseModelInfo, save_adapter
from zoo.inference.adapters import load_for_evaluation
from zoo.testing import Case, base_model, logits
from zoo.testing.contract import BATCH


def test_the_adapters_method_is_used_whatever_the_recipe_says(tmp_path):
    trained = Case(FullFineTuning, {"include": "norm"}).trained()
    folder = save_adapter(trained.adapter, tmp_path / "adapter", hooks=trained.hooks)
    for configured in (None, S2FT(), FullFineTuning(include="q_proj")):
        model = base_model()
        method, _, adapter = load_for_evaluation(model, folder, configured, BaseModelInfo.of(model, "tiny"))
        assert isinstance(method, FullFineTuning) and method.config() == {"include": "norm", "exclude": None}
        assert adapter.method == "full"
        assert (logits(model, BATCH) - logits(trained.model, BATCH)).abs().max() < 1e-4
