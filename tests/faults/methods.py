"""Method plugins that break the contract as an author might, for the fault tests."""

from __future__ import annotations

from stub_methods import Norms


class NormsOfLayers(Norms):
    """A correct method whose init argument is a set (not JSON): refused when it is loaded."""

    name = "norms-of-layers"

    def __init__(self, layers: set[int] | None = None) -> None:
        self.layers = layers


class Impostor(Norms):
    """A third-party method that registers itself under a built-in name (``lora``)."""

    name = "lora"
