"""Prefix caching: prompts that start with a kept prefix prefill only the rest, and answer the same."""

from __future__ import annotations

import pytest
import torch
from tiny_adapters import METHODS, served, train_adapter
from tiny_models import tiny_model, tiny_tokenizer

from zoo.inference import ContinuousBatcher, GenerationRequest, complete
from zoo.inference.prefix_cache import PrefixCache, shared_tokens

SHARED = [7 + i % 50 for i in range(24)]  # a system prompt's tokens, say
SUFFIXES = [[60], [61, 62, 63], [64, 65], [66, 67, 68, 69, 70], [71, 72, 73, 74], [75, 76, 77, 78, 79, 80, 81]]


def layers(tokens: int, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of keys and values for ``tokens`` tokens: token ``i`` holds ``fill + i``."""
    states = (fill + torch.arange(tokens, dtype=torch.float32)).view(1, 1, tokens, 1).expand(1, 2, tokens, 3)
    return [(states.clone(), -states.clone()) for _ in range(2)]


def test_shared_tokens_counts_the_common_start():
    assert shared_tokens([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_tokens([1, 2], [1, 2, 3]) == 2
    assert shared_tokens([9], [1]) == 0


def test_an_entry_is_cut_to_what_two_prompts_share_and_gives_at_most_all_but_the_last_token():
    cache = PrefixCache(max_tokens=100, min_tokens=4)
    first, second = [*SHARED[:10], 90, 91], [*SHARED[:10], 92]
    cache.add("a", first, layers(len(first)))
    assert cache.tokens == 12
    cache.add("a", second, layers(len(second), fill=100.0))  # shares 10 tokens: the entry becomes those
    assert (len(cache), cache.tokens) == (1, 10)
    reused, entry = cache.longest("a", [*SHARED[:10], 93, 94])
    assert reused == 10 and entry.ids == tuple(SHARED[:10])
    keys, values = entry.sliced(reused)[1]
    assert keys[0, 0, :, 0].tolist() == list(range(10)) and values.shape == (1, 2, 10, 3)  # the first prompt's
    assert cache.longest("a", SHARED[:10])[0] == 9  # the last token is run: it gives the first logits
    assert cache.longest("b", SHARED[:10]) == (0, None)  # another adapter's prompts share nothing
    assert cache.longest("a", [*SHARED[:3], 0]) == (0, None)  # below min_tokens
    cache.record(10)
    cache.record(0)
    assert (cache.hits, cache.reused_tokens) == (1, 10)  # what prefills took, not what was offered


def test_entries_are_dropped_least_recently_used_first_within_the_budget():
    cache = PrefixCache(max_tokens=30, min_tokens=4)
    prompts = {name: [ord(name)] * 10 for name in "xyz"}
    for name, ids in prompts.items():
        cache.add(name, ids, layers(10))
    assert cache.tokens == 30
    cache.longest("x", prompts["x"])  # x is used: y is now the least recent
    cache.add("w", [1] * 10, layers(10))
    assert cache.tokens == 30
    assert cache.longest("y", prompts["y"]) == (0, None)
    assert cache.longest("x", prompts["x"])[0] == 9 and cache.longest("z", prompts["z"])[0] == 9
    cache.add("v", [2] * 31, layers(31))  # larger than the whole budget: not kept, nothing dropped
    assert cache.tokens == 30
    with pytest.raises(ValueError, match="at least 1"):
        PrefixCache(0)


@pytest.fixture(scope="module")
def adapters(base):
    model, info = base
    return {m: train_adapter(m, model, info, seed=0) for m in METHODS}


def requests(names, rounds=3, new_tokens=5):
    """``rounds`` waves of one request per adapter (and the base), each a shared start and its own end."""
    out = []
    for r in range(rounds):
        for i, name in enumerate(names):
            out.append(GenerationRequest([*SHARED, *SUFFIXES[(i + r) % len(SUFFIXES)]], name, new_tokens))
    return out


def test_prompts_with_a_kept_prefix_answer_as_prefilled_whole(base, adapters):
    """Three waves of requests of every method and the base, through 4 places: the later waves start
    from their adapter's kept system prompt (a different suffix each, so rows take different shares of
    it), and every answer's tokens and logits equal those of a batcher without the cache."""
    tokenizer = tiny_tokenizer()
    todo = requests([*adapters, None])
    whole = complete(ContinuousBatcher(served(base, adapters), tokenizer, 4, keep_logits=True), todo)
    batcher = ContinuousBatcher(served(base, adapters), tokenizer, 4, keep_logits=True, prefix_cache_tokens=1000)
    cached = complete(batcher, todo)
    for request, a, b in zip(todo, whole, cached):
        assert a.tokens == b.tokens, request.adapter
        torch.testing.assert_close(b.logits, a.logits, atol=2e-5, rtol=1e-4)
    kinds = len(adapters) + 1
    assert len(batcher.prefix_cache) == kinds  # one system prompt per adapter and the base
    assert batcher.prefix_cache.hits >= len(todo) - 2 * kinds  # every request after its adapter's first two
    assert batcher.prefix_cache.reused_tokens >= batcher.prefix_cache.hits * (len(SHARED) - 6)


def test_a_reloaded_adapter_does_not_reuse_its_old_prefixes(base, adapters):
    tokenizer = tiny_tokenizer()
    server = served(base, {"a": adapters["lora"]})
    batcher = ContinuousBatcher(server, tokenizer, 1, prefix_cache_tokens=1000)  # one request after the other
    complete(batcher, requests(["a"], rounds=2))
    hits = batcher.prefix_cache.hits
    assert hits >= 1
    server.remove_adapter("a")
    server.add_adapter("a", adapters["s2ft"])  # another adapter under the same name
    again = complete(batcher, requests(["a"], rounds=1))
    assert batcher.prefix_cache.hits == hits  # its first request prefilled whole
    fresh = complete(ContinuousBatcher(server, tokenizer, 4), requests(["a"], rounds=1))
    assert [a.tokens for a in again] == [a.tokens for a in fresh]


@pytest.mark.parametrize("arch, window", [("llama-gqa", {}), ("mistral", {"sliding_window": 6})], ids=["full", "window"])
def test_a_long_prompt_prefilled_in_chunks_starts_from_its_kept_prefix(arch, window):
    """A 120-token prompt that shares 100 tokens with one prefilled before: its chunks start after
    them (fewer steps) and its answer is the one prefilled whole, sliding-window layers included."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, **window).requires_grad_(False)
    start = [5 + i % 90 for i in range(100)]
    first = GenerationRequest([*start, 1, 2, 3], None, 4)
    second = GenerationRequest([*start, *range(20, 40)], None, 6)
    whole = complete(ContinuousBatcher(model, tokenizer, 4, keep_logits=True), [second])[0]
    batcher = ContinuousBatcher(model, tokenizer, 4, keep_logits=True, prefill_chunk=16, prefix_cache_tokens=500)
    complete(batcher, [first])
    batcher.submit("second", second)
    steps, done = 0, None
    while batcher.busy:
        steps += 1
        done = next((u.completion for u in batcher.step() if u.completion is not None), done)
    assert batcher.prefix_cache.reused_tokens == 100
    assert steps == 2 + 6 - 1  # 20 tokens left: two chunks, the second giving the first token; 5 more
    assert done.tokens == whole.tokens
    torch.testing.assert_close(done.logits, whole.logits, atol=2e-5, rtol=1e-4)


def test_the_prefill_budget_counts_only_what_is_left_after_the_kept_prefix():
    """A step may prefill 15 prompt tokens: three 28-token prompts that share 24 kept tokens have 4
    each left, so they prefill together in one step (12 tokens), as they would if they were 4 tokens long."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama-gqa").requires_grad_(False)
    batcher = ContinuousBatcher(model, tokenizer, 8, prefill_chunk=15, prefix_cache_tokens=500)
    complete(batcher, [GenerationRequest([*SHARED, 60], None, 2)])
    for i in range(3):
        batcher.submit(i, GenerationRequest([*SHARED, 61 + i, 62, 63, 64], None, 3))
    batcher.step()
    assert sorted(row.uid for row in batcher.rows) == [0, 1, 2] and batcher.prefilled_last_step == 12
