"""The core default of ``ftzoo_serving_deltas`` (zoo/serving.py): slices, embeddings, norms, ties."""

from __future__ import annotations

import pytest
import torch
from hf_generate import hf_greedy
from tiny_adapters import train_adapter
from tiny_models import tiny_model, tiny_tokenizer

from tools.serve import Request, generate_mixed
from zoo.adapter import BaseModelInfo
from zoo.inference import MixedAdapterModel, encode_prompts, hooks_for
from zoo.merging import merged_adapter
from zoo.serving import EmbeddingDelta, FunctionalDelta, SliceDelta, serving_modules, slice_delta


def sparse(rows=None, cols=None, shape=(6, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(shape, generator=g)
    if rows is not None:
        keep = torch.zeros(shape[0], dtype=torch.bool)
        keep[rows] = True
        delta[~keep] = 0
    if cols is not None:
        keep = torch.zeros(shape[1], dtype=torch.bool)
        keep[cols] = True
        delta[:, ~keep] = 0
    return delta


@pytest.mark.parametrize(
    ("rows", "cols", "kept"),
    [(None, [1, 5], (6, 2)), ([0, 3], None, (2, 8)), ([2], [0, 7], (1, 2)), (None, None, (6, 8))],
    ids=["columns", "rows", "block", "dense"],
)
def test_slice_delta_keeps_only_the_nonzero_block(rows, cols, kept):
    delta = sparse(rows, cols)
    module = slice_delta(delta, out_features=6)
    assert tuple(module.block.shape) == kept
    assert (module.rows is None) == (rows is None) and (module.cols is None) == (cols is None)
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(module(x), x @ delta.T)


def test_bias_only_and_weight_plus_bias():
    bias = torch.randn(6)
    x = torch.randn(2, 8)
    torch.testing.assert_close(slice_delta(None, 6, bias)(x), bias.expand(2, 6))
    delta = sparse(None, [2])
    torch.testing.assert_close(slice_delta(delta, 6, bias)(x), x @ delta.T + bias)


def test_module_kinds_and_tied_embeddings():
    model = tiny_model(tie_word_embeddings=True)
    embed = "model.embed_tokens.weight"
    deltas = {
        embed: torch.randn_like(model.get_parameter(embed)),
        "model.norm.weight": torch.randn(64),
        "model.layers.0.mlp.down_proj.weight": sparse(None, [3, 4], (64, 96)),
        "model.layers.1.mlp.up_proj.weight": torch.zeros(96, 64),  # unchanged: left out
    }
    modules = serving_modules(deltas, model)
    assert isinstance(modules["model.embed_tokens"], EmbeddingDelta)
    assert isinstance(modules["lm_head"], SliceDelta)  # the tied output layer changes too
    assert isinstance(modules["model.norm"], FunctionalDelta)
    assert modules["model.layers.0.mlp.down_proj"].cols.tolist() == [3, 4]
    assert "model.layers.1.mlp.up_proj" not in modules


@pytest.mark.parametrize(("arch", "overrides"), [("llama-gqa", {"tie_word_embeddings": True}), ("qwen2", {})])
def test_served_full_adapters_equal_fused_on_tied_and_biased_models(arch, overrides):
    model = tiny_model(arch, **overrides).requires_grad_(False)
    info = BaseModelInfo.of(model, f"tiny-{arch}")
    adapters = {f"full-{s}": train_adapter("full", model, info, seed=s) for s in range(2)}
    adapters["cols"] = merged_adapter(
        {n: sparse(None, [1, 2], tuple(p.shape)) for n, p in model.named_parameters() if n.endswith("o_proj.weight")},
        info,
    )
    server = MixedAdapterModel(model, info)
    for name, adapter in adapters.items():
        server.add_adapter(name, adapter)
    tokenizer = tiny_tokenizer()
    requests = [Request("hello", "full-0"), Request("sea", "full-1"), Request("abc", "cols"), Request("xy", None)]
    answers = generate_mixed(server, tokenizer, requests, batch_size=4, max_new_tokens=4, logits=True)
    for request, answer in zip(requests, answers):
        fused = tiny_model(arch, **overrides)
        if request.adapter:
            hooks_for(adapters[request.adapter]).ftzoo_fuse_adapter(
                model=fused, adapter=adapters[request.adapter], scale=1.0
            )
        batch = encode_prompts(tokenizer, [request.prompt], False, "cpu")
        tokens, logits = hf_greedy(fused, tokenizer, batch, 4, logits=True)
        assert answer.tokens == tokens[0, : len(answer.tokens)].tolist()
        torch.testing.assert_close(answer.logits, logits[0, : len(answer.tokens)], atol=2e-5, rtol=1e-4)
