"""The masked linear layer: exact forward, sparse gradients, and what autograd keeps alive.

Memory is measured by recording every tensor autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``) and counting the bytes of storages that
are neither the inputs nor the module's own tensors: what a layer adds to activation
memory. The obvious implementation (``F.linear(x, W + zeros.index_put(idx, values))``)
keeps a dense ``[out, in]`` weight per layer; ours keeps nothing of that size.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.sparse.layer import SparseMaskLinear

OUT, IN, K = 96, 64, 300


def masked_layer(grad_mode: str = "dense", dtype=torch.float32, seed: int = 0) -> tuple[nn.Linear, SparseMaskLinear]:
    torch.manual_seed(seed)
    base = nn.Linear(IN, OUT, bias=True).to(dtype).requires_grad_(False)
    indices = torch.randperm(OUT * IN)[:K].sort().values
    layer = SparseMaskLinear(base, indices, torch.float32, grad_mode)
    with torch.no_grad():
        layer.mask_values.normal_()
    return base, layer


def naive(x: torch.Tensor, layer: SparseMaskLinear) -> torch.Tensor:
    """The reference: a dense delta built by index_put, differentiated by autograd."""
    idx = layer.mask_indices.long()
    delta = torch.zeros(OUT * IN, dtype=layer.mask_values.dtype).index_put((idx,), layer.mask_values).view(OUT, IN)
    return F.linear(x, layer.weight + delta.to(layer.weight.dtype), layer.bias)


def test_shares_base_tensors_and_names():
    base, layer = masked_layer()
    assert layer.weight is base.weight and layer.bias is base.bias and isinstance(layer, nn.Linear)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["mask_values"]
    assert layer.mask_indices.dtype == torch.int32 and "mask_indices" not in layer.state_dict()


@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_forward_and_gradients_match_the_dense_reference(grad_mode):
    _, layer = masked_layer(grad_mode)
    x = torch.randn(2, 7, IN, requires_grad=True)
    out = layer(x)
    (grad_out,) = torch.randn(1, *out.shape)
    gx, gv = torch.autograd.grad(out, (x, layer.mask_values), grad_out)
    ref = naive(x, layer)
    rx, rv = torch.autograd.grad(ref, (x, layer.mask_values), grad_out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gv, rv)
    assert layer.weight.grad is None and gv.shape == (K,)


def test_half_precision_base_with_float32_values():
    _, layer = masked_layer(dtype=torch.bfloat16)
    x = torch.randn(3, IN, dtype=torch.bfloat16)
    out = layer(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and layer.mask_values.grad.dtype == torch.float32
    torch.testing.assert_close(out, naive(x, layer))


def saved_bytes(fn, own: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves during ``fn()`` that are not in ``own``."""
    known = {t.untyped_storage().data_ptr() for t in own}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_autograd_keeps_no_dense_weight_alive():
    _, layer = masked_layer()
    x = torch.randn(4, IN, requires_grad=True)  # a layer mid-network: earlier layers train too
    own = [x, layer.weight, layer.bias, layer.mask_values, layer.mask_indices]
    ours, obvious = saved_bytes(lambda: layer(x), own), saved_bytes(lambda: naive(x, layer), own)
    weight_bytes = OUT * IN * 4
    assert ours == 0
    assert obvious >= weight_bytes  # W + delta, kept until the backward pass to compute ∂x


def test_trainable_state_scales_with_masked_entries():
    _, layer = masked_layer()
    optimizer = torch.optim.AdamW([layer.mask_values])
    layer(torch.randn(5, IN)).sum().backward()
    optimizer.step()
    state = [layer.mask_values, layer.mask_values.grad, *optimizer.state[layer.mask_values].values()]
    numel = sum(t.numel() for t in state if t.dim() > 0)
    assert numel == 4 * K  # values, gradient, Adam's two moments: none of OUT x IN
