"""The compact JSON encoding of mask indices carried by the selection."""

import json

import pytest
import torch

from plugins.sparse.indices import decode, encode


def test_roundtrip_and_size():
    numel = 1536 * 576  # SmolLM2-135M up_proj
    indices = torch.rand(numel, generator=torch.Generator().manual_seed(0)).topk(numel // 100).indices.sort().values
    text = encode(indices)
    assert torch.equal(decode(json.loads(json.dumps(text)), len(indices)), indices)
    assert len(text) / len(indices) < 2.5  # bytes per index; a JSON list of numbers takes ~7


def test_empty_and_edges():
    assert decode(encode(torch.tensor([], dtype=torch.int64)), 0).numel() == 0
    edge = torch.tensor([0, 1, 2**32 - 1])
    assert torch.equal(decode(encode(edge), 3), edge)


@pytest.mark.parametrize("bad", [[3, 1], [1, 1], [-1, 2], [0, 2**32]])
def test_rejects_unsorted_duplicate_or_out_of_range(bad):
    with pytest.raises(ValueError):
        encode(torch.tensor(bad))


def test_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="holds 2 indices"):
        decode(encode(torch.tensor([1, 5])), 3)
