"""Which architectures S²FT accepts, and the messages for those it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model
from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from plugins.s2ft import S2FT
from plugins.s2ft.structures import UnsupportedArchitectureError, coupled_blocks


def select(model):
    return S2FT(o_heads=1, down_channels=4).ftzoo_select_parameters(model=model, calibration_batches=None, seed=0)


def test_known_families_describe_their_blocks():
    blocks = coupled_blocks(tiny_model("llama-gqa"))
    assert [b.prefix for b in blocks] == ["model.layers.0", "model.layers.1"]
    assert (blocks[0].num_heads, blocks[0].num_kv_heads, blocks[0].head_dim, blocks[0].group_size) == (4, 2, 16, 2)
    assert blocks[0].module_name("o") == "model.layers.0.self_attn.o_proj"


def test_gpt2_is_refused_clearly():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        select(model)


def test_fused_projections_are_refused_clearly():
    config = Phi3Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        pad_token_id=0,
    )
    with pytest.raises(UnsupportedArchitectureError, match=r"'phi3'.*lack self_attn\.q_proj.*qkv_proj"):
        select(Phi3ForCausalLM(config))


def test_other_decoders_with_the_same_projections_work(s2):
    """Qwen3 is not a listed family; its per-head q/k norms are shared by all heads, so it is accepted."""
    config = Qwen3Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=260,
    )
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(config).double().eval().requires_grad_(False)
    model = copy.deepcopy(base)
    S2FT().ftzoo_rewrite_model(model=model, selection=select(base))
    batch = s2.make_batch(0)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=1e-12, atol=1e-12)


def test_per_head_parameters_are_refused():
    model = tiny_model("llama-gqa")
    model.config.model_type = "llama-with-sinks"
    model.model.layers[0].self_attn.sinks = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(UnsupportedArchitectureError, match="sinks.*head order"):
        select(model)
