"""``merged``: the method of the adapters a dense merge makes (the formulas are in :mod:`zoo.merging`)."""

from plugins.merge.plugin import MergedDeltas

__all__ = ["MergedDeltas"]
