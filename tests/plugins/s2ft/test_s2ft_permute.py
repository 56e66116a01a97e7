"""Co-permutation keeps the model's function and makes the selected units (nearly) contiguous."""

from __future__ import annotations

import math
import random

import pytest
import torch

from plugins.s2ft.permute import permute_, place_front, plan_attention, plan_channels, runs
from s2ft_cases import ALL_ROLES



@pytest.mark.parametrize("arch", ["llama-gqa", "llama-mha", "mistral", "qwen2"])
def test_rewrite_keeps_logits(s2, arch):
    r = s2.rewritten(arch, **ALL_ROLES)
    batch = s2.make_batch(1)
    with torch.no_grad():
        expected = r.base(input_ids=batch["input_ids"]).logits
        actual = r.model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert len(s2.s2ft_layers(r.model)) == 10  # 5 roles × 2 layers


def test_rewrite_keeps_logits_smollm2_gqa_shape(s2):
    """9 query heads over 3 kv heads (SmolLM2-135M's grouping): O selections need several runs."""
    shape = {"hidden_size": 72, "num_attention_heads": 9, "num_key_value_heads": 3}
    r = s2.rewritten("llama-gqa", shape=shape, o_heads=4, v_heads=1, down_channels=0.1, allocation="per_layer", seed=3)
    assert any(len(layer.runs) > 1 for layer in s2.s2ft_layers(r.model).values())
    batch = s2.make_batch(2)
    with torch.no_grad():
        torch.testing.assert_close(r.model(**batch).logits, r.base(**batch).logits, rtol=1e-12, atol=1e-12)


def test_qwen2_bias_moves_with_rows(s2):
    r = s2.rewritten("qwen2", v_heads=1, o_heads=0, down_channels=0, allocation="per_layer", seed=1)
    for name, layer in s2.s2ft_layers(r.model).items():
        base = r.base.get_submodule(name)
        assert layer.s2ft_bias is not None
        # The trained bias slice is the base bias of the selected kv head, wherever it moved.
        (unit,) = layer.slot_units
        hd = layer.unit_size
        torch.testing.assert_close(layer.s2ft_bias.detach(), base.bias[unit * hd : (unit + 1) * hd])


def _valid(head_order, kv_order, r):
    """Every query head still reads its own kv head."""
    return all(head_order[j] // r == kv_order[j // r] for j in range(len(head_order)))


@pytest.mark.parametrize("num_heads,num_kv", [(9, 3), (8, 2), (12, 4), (32, 8), (6, 6), (4, 1)])
def test_plan_attention_on_random_selections(num_heads, num_kv):
    rng = random.Random(num_heads * 100 + num_kv)
    r = num_heads // num_kv
    for _ in range(200):
        o = set(rng.sample(range(num_heads), rng.randint(0, num_heads)))
        v = set(rng.sample(range(num_kv), rng.randint(0, num_kv))) if rng.random() < 0.5 else set()
        head_order, kv_order = plan_attention(num_heads, num_kv, o, v)
        assert sorted(head_order) == list(range(num_heads)) and sorted(kv_order) == list(range(num_kv))
        assert _valid(head_order, kv_order, r)
        assert len(runs(kv_order, v, 1)) <= 1  # V is always one block
        partial = sum(0 < len(o & set(range(g * r, (g + 1) * r))) < r for g in range(num_kv))
        bound = math.ceil(partial / 2) if partial else (1 if o else 0)
        o_runs = len(runs(head_order, o, 1))
        assert o_runs <= (bound if not v else bound + 1), (o, v, head_order)
        if r == 1:
            assert o_runs <= 1  # multi-head attention: always one block


def test_plan_attention_docstring_examples():
    head_order, kv_order = plan_attention(6, 3, {1, 2, 3, 4}, set())
    assert kv_order == [0, 1, 2]  # g0 (selected last), g1 (full), g2 (selected first)
    assert runs(head_order, {1, 2, 3, 4}, 1) == [(1, 5)]
    head_order, _ = plan_attention(6, 3, {0, 2, 4}, set())
    assert head_order == [1, 0, 2, 3, 5, 4]
    assert runs(head_order, {0, 2, 4}, 1) == [(1, 3), (5, 6)]


def test_plan_channels_makes_up_and_down_contiguous():
    rng = random.Random(0)
    for _ in range(100):
        up, gate, down = (set(rng.sample(range(40), rng.randint(0, 12))) for _ in range(3))
        order = plan_channels(40, {"up": up, "gate": gate, "down": down})
        assert sorted(order) == list(range(40))
        assert len(runs(order, up, 1)) <= 1 and len(runs(order, down, 1)) <= 1
        assert len(runs(order, gate, 1)) <= 2
        assert len(runs(plan_channels(40, {"gate": gate, "down": down}), gate, 1)) <= 1


def test_permutation_moves_only_the_units_it_must():
    order = place_front([2, 5], 8)
    assert order == [2, 5, 0, 3, 4, 1, 6, 7]  # 0 and 1 take the places 2 and 5 left
    weight = torch.arange(8 * 3, dtype=torch.float64).reshape(8, 3)
    expected = weight[order]
    storage = weight.data_ptr()
    permute_(weight, order, dim=0, unit_size=1)
    assert torch.equal(weight, expected) and weight.data_ptr() == storage  # in place
    columns = torch.arange(2 * 16, dtype=torch.float64).reshape(2, 16)
    expected = columns.reshape(2, 8, 2)[:, order].reshape(2, 16)
    permute_(columns, order, dim=1, unit_size=2)
    assert torch.equal(columns, expected)
