"""ftzoo's adapter contract for the ``norms`` method, run by this package's own tests.

Every check of :mod:`zoo.testing` (train → save → load → fuse → unfuse → deltas → resume
→ merge → serve → export) on a model without biases (Llama) and one with (Qwen2, where
``biases=True`` trains them too). Run: ``pytest examples/ftzoo-norms/tests``.
"""

import pytest
from ftzoo_norms import NormsOnly

from zoo.testing import CHECKS, Case

CASES = [
    Case(NormsOnly),
    Case(NormsOnly, {"include_final_norm": False}, arch="qwen2"),
    Case(NormsOnly, {"biases": True}, arch="qwen2"),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_contract(case, check, tmp_path):
    check(case, tmp_path)
