"""Merging adapters: the ``merged`` method and the merge formulas (``tools/merge.py`` uses them)."""

from plugins.merge.plugin import MergedDeltas, merged_adapter

__all__ = ["MergedDeltas", "merged_adapter"]
