"""Sparse masks: unstructured sparse fine-tuning (``sparse`` in ``ftzoo.methods``)."""

from plugins.sparse.plugin import SparseMask

__all__ = ["SparseMask"]
