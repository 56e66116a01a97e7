"""Fault 12: tool options that would do all the work for nothing, refused before any work.

| case                                            | what the user sees                                        | kept on disk   |
| ----------------------------------------------- | --------------------------------------------------------- | -------------- |
| ``tools.merge --how ties --density 0`` (also    | ValueError before any adapter is read: "ties with density | no output      |
| dare, dare_ties, breadcrumbs)                   | 0 keeps none of any adapter's changes: the merge would be |                |
|                                                 | an empty adapter ...; give ... in (0, 1]"                 |                |
"""

from __future__ import annotations

import pytest

from tools import merge as merge_tool
from tools.merge import merge


@pytest.mark.parametrize("how", ["ties", "dare", "dare_ties", "breadcrumbs"])
def test_a_merge_that_keeps_nothing_is_refused_before_any_adapter_is_read(how, tiny, tmp_path, monkeypatch):
    sources = [str(tiny.saved("s2ft", tmp_path / "a")), str(tiny.saved("s2ft", tmp_path / "b", seed=1))]
    monkeypatch.setattr(merge_tool, "read_adapter", lambda *a: pytest.fail("an adapter was read"))
    with pytest.raises(ValueError, match=rf"^{how} with density 0 keeps none of any adapter's changes: the merge would "
                                         r"be an empty adapter .*in \(0, 1\]"):  # fmt: skip
        merge(sources, str(tmp_path / "merged"), how=how, density=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
