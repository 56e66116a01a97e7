"""S²FT: structured sparse fine-tuning (Yang et al., NeurIPS 2024) as an ftzoo method.

Modules by role: :mod:`~plugins.s2ft.structures` (coupled heads and channels per
architecture family), :mod:`~plugins.s2ft.config` (roles, budgets, paper recipes),
:mod:`~plugins.s2ft.selection` (scoring strategies), :mod:`~plugins.s2ft.permute`
(co-permutation), :mod:`~plugins.s2ft.layers` (partial backward), :mod:`~plugins.s2ft.adapter`
(extract, fuse, merge) and :mod:`~plugins.s2ft.plugin` (the hooks).
"""

from plugins.s2ft.adapter import StructuredUpdate, structured_updates
from plugins.s2ft.plugin import S2FT

__all__ = ["S2FT", "StructuredUpdate", "structured_updates"]
