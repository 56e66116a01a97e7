"""Testing a method plugin: tiny models, a training harness and the adapter contract.

A plugin's own tests run the whole contract over its method (see :mod:`zoo.testing.contract`)::

    import pytest
    from zoo.testing import CHECKS, Case

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    @pytest.mark.parametrize("case", [Case(MyMethod), Case(MyMethod, arch="qwen2")], ids=str)
    def test_contract(case, check, tmp_path):
        check(case, tmp_path)

Needs pytest (checks that do not apply skip through it).
"""

from zoo.testing.contract import CHECKS, MERGES, Case
from zoo.testing.harness import Trained, base_model, batches, logits, train
from zoo.testing.models import save_tiny_model, tiny_model, tiny_tokenizer

__all__ = [
    "CHECKS",
    "MERGES",
    "Case",
    "Trained",
    "base_model",
    "batches",
    "logits",
    "save_tiny_model",
    "tiny_model",
    "tiny_tokenizer",
    "train",
]
