"""ftzoo-norms: an example third-party ftzoo method (``norms``)."""

from ftzoo_norms.plugin import NormsOnly

__all__ = ["NormsOnly"]
