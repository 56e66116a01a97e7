"""S²FT test settings shared by the tests under tests/plugins/s2ft (importable by name)."""

ALL_ROLES = {
    "o_heads": 0.5,
    "v_heads": 0.5,
    "down_channels": 0.3,
    "up_channels": 0.2,
    "gate_channels": 0.2,
    "allocation": "per_layer",
}
"""Budgets that train every role in every layer, large enough to select several units."""
