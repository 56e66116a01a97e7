"""Every selection strategy picks what its definition says, on hand-built weights and activations.

The tiny GQA Llama has 4 query heads of 16 over 2 kv heads, 96 FFN channels and 2 blocks;
the hand-set scales below dwarf the random spread of the initial weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from plugins.s2ft import S2FT
from plugins.s2ft.selection import GradientStrategy, Target
from plugins.s2ft.structures import coupled_blocks

HD = 16


def base():
    return tiny_model("llama-gqa", dtype=torch.float64).requires_grad_(False)


def select(model, s2, **config):
    config = {"o_heads": 0, "down_channels": 0, "allocation": "per_layer", "layers": [0], **config}
    batches = s2.calibration(s2.make_batch(0), s2.make_batch(1))
    selection = S2FT(**config).ftzoo_select_parameters(model=model, calibration_batches=batches, seed=0)
    return {e["role"]: e["units"] for e in selection["projections"] if e["layer"] == 0}


@torch.no_grad()
def scale_o_head(model, head, factor):
    model.model.layers[0].self_attn.o_proj.weight[:, head * HD : (head + 1) * HD] *= factor


@torch.no_grad()
def scale_kv_head(model, group, factor):
    model.model.layers[0].self_attn.v_proj.weight[group * HD : (group + 1) * HD] *= factor


@torch.no_grad()
def scale_down_column(model, channel, factor):
    model.model.layers[0].mlp.down_proj.weight[:, channel] *= factor


@torch.no_grad()
def scale_up_row(model, channel, factor):
    model.model.layers[0].mlp.up_proj.weight[channel] *= factor


def test_weight_strategy(s2):
    model = base()
    for head, factor in enumerate([1.0, 8.0, 0.1, 4.0]):
        scale_o_head(model, head, factor)
    scale_kv_head(model, 0, 10.0)
    scale_down_column(model, 7, 10.0)
    scale_down_column(model, 3, 0.0)
    scale_up_row(model, 11, 10.0)
    assert select(model, s2, strategy="weight", o_heads=2, v_heads=1, down_channels=1, up_channels=1) == {
        "o": [1, 3],
        "v": [0],
        "down": [7],
        "up": [11],
    }
    assert select(model, s2, strategy="weight", largest=False, o_heads=2, down_channels=1) == {"o": [0, 2], "down": [3]}


def test_activation_strategy(s2):
    model = base()
    scale_kv_head(model, 1, 50.0)  # query heads 2 and 3 read kv head 1: their outputs grow 50×
    scale_up_row(model, 40, 50.0)  # channel 40: up output and down input grow 50×
    scale_up_row(model, 5, 0.0)  # channel 5: no activation at all
    scale_down_column(model, 9, 100.0)  # a heavy weight does not change activations
    picked = select(model, s2, strategy="activation", o_heads=2, v_heads=1, down_channels=1, up_channels=1)
    assert picked == {"o": [2, 3], "v": [1], "down": [40], "up": [40]}
    assert select(model, s2, strategy="activation", largest=False, down_channels=1) == {"down": [5]}


def test_weight_activation_strategy(s2):
    model = base()
    scale_down_column(model, 10, 10.0)  # W 10×, A 1×
    scale_up_row(model, 20, 10.0)  # W 1×, A 10×
    scale_down_column(model, 30, 6.0)  # W 6×, A 6×: product 36
    scale_up_row(model, 30, 6.0)
    assert select(model, s2, strategy="weight", down_channels=1) == {"down": [10]}
    assert select(model, s2, strategy="activation", down_channels=1) == {"down": [20]}
    assert select(model, s2, strategy="weight_activation", down_channels=1) == {"down": [30]}


def test_gradient_strategy_hand_built(s2):
    model = base()
    scale_kv_head(model, 1, 50.0)  # ∂L/∂O[:, head] = Σ grad_yᵀ · out_head: heads 2, 3 grow 50×
    scale_up_row(model, 60, 50.0)  # ∂L/∂down[:, c] grows with channel c's activation
    assert select(model, s2, strategy="gradient", o_heads=2, down_channels=1) == {"o": [2, 3], "down": [60]}
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())  # left as found


def test_gradient_scores_are_per_batch_gradient_norms(s2):
    model = base()
    batches = [s2.make_batch(0), s2.make_batch(1)]
    block = coupled_blocks(model)[1]
    targets = [Target.of(block, "o"), Target.of(block, "up")]
    scores = GradientStrategy().scores(targets, model, s2.calibration(*batches), torch.Generator())
    expected = [torch.zeros(4, dtype=torch.float64), torch.zeros(96, dtype=torch.float64)]
    for batch in batches:
        weights = [t.linear.weight.detach().clone().requires_grad_(True) for t in targets]
        twin = tiny_model("llama-gqa", dtype=torch.float64)
        twin.model.layers[1].self_attn.o_proj.weight = torch.nn.Parameter(weights[0])
        twin.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(weights[1])
        twin(**batch).loss.backward()
        o_grad, up_grad = (
            p.grad for p in (twin.model.layers[1].self_attn.o_proj.weight, twin.model.layers[1].mlp.up_proj.weight)
        )
        expected[0] += o_grad.reshape(64, 4, HD).pow(2).sum((0, 2))  # columns of each query head
        expected[1] += up_grad.pow(2).sum(1)  # each up row
    torch.testing.assert_close(scores[0], expected[0].sqrt())
    torch.testing.assert_close(scores[1], expected[1].sqrt())


def test_random_is_seeded_and_reproducible(s2):
    model = base()
    first = S2FT(strategy="random", down_channels=0.2).ftzoo_select_parameters(
        model=model, calibration_batches=None, seed=3
    )
    again = S2FT(strategy="random", down_channels=0.2).ftzoo_select_parameters(
        model=model, calibration_batches=None, seed=3
    )
    other = S2FT(strategy="random", down_channels=0.2, seed_offset=1).ftzoo_select_parameters(
        model=model, calibration_batches=None, seed=3
    )
    assert first == again and first != other
    json.dumps(first)  # JSON-able


def test_budgets_fraction_count_global_and_per_layer():
    model = base()

    def counts(**config):
        selection = S2FT(**{"o_heads": 0, "down_channels": 0, **config}).ftzoo_select_parameters(
            model=model, calibration_batches=None, seed=0
        )
        return {(e["layer"], e["role"]): len(e["units"]) for e in selection["projections"]}

    assert sum(counts(o_heads=0.25).values()) == 2  # 25 % of 2 × 4 heads, spread globally
    assert counts(o_heads=0.25, allocation="per_layer") == {(0, "o"): 1, (1, "o"): 1}
    assert counts(o_heads=3, allocation="per_layer") == {(0, "o"): 3, (1, "o"): 3}
    assert sum(counts(down_channels=10).values()) == 10  # a count over all layers
    assert counts(down_channels=0.01, layers=[1]) == {(1, "down"): 1}  # a positive fraction picks ≥ 1
    with pytest.raises(ValueError, match="fraction"):
        S2FT(o_heads=1.5)
    with pytest.raises(ValueError, match="only 4 exist"):
        counts(o_heads=5, allocation="per_layer")
    with pytest.raises(ValueError, match="nothing to train"):
        counts()
    with pytest.raises(ValueError, match="strategy"):
        S2FT(strategy="magnitude")


def test_selection_is_in_original_coordinates(s2):
    r = s2.rewritten(
        "llama-gqa",
        shape={"hidden_size": 72, "num_attention_heads": 9, "num_key_value_heads": 3},
        o_heads=4,
        down_channels=0.2,
        allocation="per_layer",
        seed=4,
    )
    for entry in r.selection["projections"]:
        layer = s2.s2ft_layers(r.model)[entry["module"]]
        assert sorted(layer.slot_units) == entry["units"]


def test_top_layers_is_the_upper_fraction_of_the_blocks():
    model = base()  # two blocks

    def select(**config):
        return S2FT(o_heads=0.25, down_channels=0.1, **config).ftzoo_select_parameters(
            model=model, calibration_batches=None, seed=0
        )

    assert select(top_layers=0.5) == select(layers=[1])
    assert select(top_layers=0.01) == select(layers=[1])  # at least one block
    assert select(top_layers=1.0) == select()
    with pytest.raises(ValueError, match="top_layers"):
        S2FT(top_layers=0)
    with pytest.raises(ValueError, match="not both"):
        S2FT(top_layers=0.5, layers=[1])
