"""Continuous batching: requests that join and leave a running batch get what each gets alone."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_generate import hf_greedy
from tiny_adapters import METHODS, served, train_adapter
from tiny_models import tiny_model, tiny_tokenizer

from zoo.adapter import BaseModelInfo
from zoo.inference import (
    ContinuousBatcher,
    GenerationRequest,
    MixedAdapterModel,
    Sampling,
    complete,
    encode_prompts,
    hooks_for,
    prompt_ids,
)
from zoo.inference.batching import MIN_PREFILL_TOKENS
from zoo.inference.kv_cache import join, keep_rows, trim_padding
from zoo.inference.text import TextStream

PROMPTS = ["hello", "the sea is", "a", "12 + 7 =", "once upon a time there", "xyz", "Q:", "ok then", "b", "cd"]


@pytest.fixture(scope="module")
def adapters(base):
    model, info = base
    return {f"{m}-{s}": train_adapter(m, model, info, seed=s) for m in METHODS for s in range(2)}


def alone(base, adapter, prompt, new_tokens):
    """Greedy tokens and logits of one prompt on a fresh base with the adapter fused."""
    model = copy.deepcopy(base[0])
    if adapter is not None:
        hooks_for(adapter).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    tokenizer = tiny_tokenizer()
    batch = encode_prompts(tokenizer, [prompt], False, "cpu")
    tokens, logits = hf_greedy(model, tokenizer, batch, new_tokens, True)
    return tokens[0].tolist(), logits[0]


def test_requests_joining_and_leaving_mid_decode_get_their_own_answers(base, adapters):
    """10 requests of every method (and the base) through 3 places: short answers leave early,
    waiting requests join a batch that is mid-way, and each answer equals its adapter fused alone."""
    tokenizer = tiny_tokenizer()
    names = [*adapters, None]
    lengths = [1, 6, 2, 5, 3, 6, 1, 4, 6, 2]
    requests = [
        GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i % len(names)], lengths[i])
        for i, p in enumerate(PROMPTS)
    ]
    batcher = ContinuousBatcher(served(base, adapters), tokenizer, max_batch_size=3, keep_logits=True)
    for i, request in enumerate(requests):
        batcher.submit(i, request)
    done, shapes = {}, []
    while batcher.busy:
        for update in batcher.step():
            if update.completion is not None:
                done[update.uid] = update.completion
        shapes.append(sorted(len(row.generated) for row in batcher.rows))
    assert max(len(s) for s in shapes) == 3  # the places were full ...
    assert any(len(set(s)) > 1 for s in shapes)  # ... with requests at different points of their answers
    for i, (prompt, request) in enumerate(zip(PROMPTS, requests)):
        tokens, logits = alone(base, adapters.get(request.adapter), prompt, request.max_new_tokens)
        answer = done[i]
        assert answer.tokens == tokens[: len(answer.tokens)], (i, request.adapter)
        assert len(answer.tokens) == request.max_new_tokens or answer.tokens[-1] == tokenizer.eos_token_id
        assert answer.finish_reason == ("length" if len(answer.tokens) == request.max_new_tokens else "stop")
        torch.testing.assert_close(answer.logits, logits[: len(answer.tokens)], atol=2e-5, rtol=1e-4)
        assert answer.text == tokenizer.decode(answer.tokens, skip_special_tokens=True)
        assert answer.prompt_tokens == len(request.ids)


def test_a_cancelled_request_leaves_and_the_others_are_unchanged(base, adapters):
    tokenizer = tiny_tokenizer()
    names = list(adapters)[:3]
    requests = [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], n, 6) for p, n in zip(PROMPTS, names)]
    expected = complete(ContinuousBatcher(served(base, adapters), tokenizer, 4), requests)
    batcher = ContinuousBatcher(served(base, adapters), tokenizer, 4)
    for i, request in enumerate(requests):
        batcher.submit(i, request)
    batcher.submit("waiting", requests[0])
    assert batcher.cancel("waiting") and not batcher.cancel("nobody")
    done = {}
    for step in range(10):
        if step == 2:
            assert batcher.cancel(1)
        done.update({u.uid: u.completion for u in batcher.step() if u.completion is not None})
        if step == 3:
            assert [row.uid for row in batcher.rows] == [0, 2]
    assert not batcher.busy and set(done) == {0, 2}
    assert [done[0].tokens, done[2].tokens] == [expected[0].tokens, expected[2].tokens]


def test_a_seeded_request_samples_the_same_whatever_shares_its_batch(base, adapters):
    tokenizer = tiny_tokenizer()
    server = served(base, adapters)
    ids = prompt_ids(tokenizer, ["hello"], False)[0]
    seeded = GenerationRequest(ids, "full-0", 8, Sampling(temperature=1.5, seed=7))
    others = [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], None, 5, Sampling(1.0)) for p in PROMPTS[:4]]
    first = complete(ContinuousBatcher(server, tokenizer, 8), [seeded])[0]
    second = complete(ContinuousBatcher(server, tokenizer, 8), [*others, seeded])[-1]
    assert first.tokens == second.tokens
    other_seed = GenerationRequest(ids, "full-0", 8, Sampling(temperature=1.5, seed=8))
    samples = {tuple(complete(ContinuousBatcher(server, tokenizer, 8), [r])[0].tokens) for r in [seeded, other_seed]}
    assert len(samples) == 2  # the seed matters
    greedy = complete(ContinuousBatcher(server, tokenizer, 8), [GenerationRequest(ids, "full-0", 8)])[0]
    nucleus_of_one = GenerationRequest(ids, "full-0", 8, Sampling(temperature=1.0, top_p=1e-6, seed=3))
    assert complete(ContinuousBatcher(server, tokenizer, 8), [nucleus_of_one])[0].tokens == greedy.tokens


def test_stop_strings_end_the_answer_before_them():
    tokenizer = tiny_tokenizer()
    base = tiny_model("llama-gqa")
    server = MixedAdapterModel(base, BaseModelInfo.of(base, "tiny"))
    ids = prompt_ids(tokenizer, ["hello"], False)[0]
    free = complete(ContinuousBatcher(server, tokenizer), [GenerationRequest(ids, None, 12)])[0]
    assert len(free.text) >= 6, "the tiny model should answer a few characters"
    stop = free.text[3:5]
    stopped = complete(ContinuousBatcher(server, tokenizer), [GenerationRequest(ids, None, 12, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(stop)]
    assert free.tokens[: len(stopped.tokens)] == stopped.tokens and len(stopped.tokens) < len(free.tokens)


def test_the_context_ends_an_answer_and_a_prompt_must_leave_room():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama-gqa", max_position_embeddings=12)
    batcher = ContinuousBatcher(MixedAdapterModel(model, BaseModelInfo.of(model, "tiny")), tokenizer)
    answer = complete(batcher, [GenerationRequest(list(range(4, 12)), None, 50)])[0]
    assert answer.finish_reason == "length" and len(answer.tokens) == 12 - 8
    with pytest.raises(ValueError, match="12"):
        batcher.submit("long", GenerationRequest(list(range(4, 16)), None, 1))
    with pytest.raises(ValueError, match="empty"):
        batcher.submit("empty", GenerationRequest([], None, 1))
    with pytest.raises(KeyError, match="nope"):
        batcher.submit("unknown", GenerationRequest([5], "nope", 1))


class ByteTokenizer:
    """Decodes byte tokens as UTF-8 (what a byte-level BPE does with a split character)."""

    def decode(self, tokens, skip_special_tokens=True):
        return bytes(tokens).decode("utf-8", errors="replace")


@pytest.mark.parametrize("stop", [(), ("END",), ("é!", "xyz")])
def test_streamed_pieces_join_to_the_final_text_and_never_show_a_stop_string(stop):
    stream = TextStream(ByteTokenizer(), stop)
    pieces = [stream.push(b) for b in "café ok é! later END more".encode()]
    pieces.append(stream.flush())
    shown = "".join(pieces)
    assert shown == stream.text and "\ufffd" not in shown
    if stop:
        assert stream.stopped and not any(s in shown for s in stop)
        assert shown == "café ok " if "é!" in stop else shown == "café ok é! later "
    else:
        assert shown == "café ok é! later END more"


def test_cache_rows_join_leave_and_padding_is_trimmed():
    from transformers.cache_utils import DynamicCache

    def cache_of(keys):
        cache = DynamicCache()
        cache.update(keys, keys + 100, 0)
        return cache

    a = cache_of(torch.arange(2 * 3, dtype=torch.float).reshape(2, 1, 3, 1))  # 2 rows, 3 columns
    b = cache_of(torch.arange(5, dtype=torch.float).reshape(1, 1, 5, 1) + 50)  # 1 row, 5 columns
    mask_a, mask_b = torch.tensor([[0, 1, 1], [1, 1, 1]]), torch.ones(1, 5, dtype=torch.long)
    cache, mask = join(a, mask_a, b, mask_b)
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert cache.layers[0].keys[:, 0, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 3, 4, 5], [50, 51, 52, 53, 54]]
    mask = trim_padding(cache, keep_rows(cache, mask, torch.tensor([0, 1])))
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert cache.layers[0].values[:, 0, :, 0].tolist() == [[100, 101, 102], [103, 104, 105]]


@pytest.mark.parametrize(
    "arch, window",
    [("mistral", {"sliding_window": 6}), ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1})],
    ids=["mistral", "qwen2-hybrid"],
)
def test_sliding_window_rows_see_their_own_window_as_each_alone(arch, window):
    """Windows of 6 tokens on prompts of 1 to 22 tokens and 10 new tokens: rows with different
    padding join and leave the batch, and each sees exactly its own last 6 tokens, as ``generate``
    (with transformers' own sliding-window cache) decodes it alone (Qwen2: one full, one sliding layer)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, **window)
    server = MixedAdapterModel(model, BaseModelInfo.of(model, "tiny"))
    requests = [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], None, 10) for p in PROMPTS]
    answers = complete(ContinuousBatcher(server, tokenizer, max_batch_size=3, keep_logits=True), requests)
    for prompt, answer in zip(PROMPTS, answers):
        tokens, logits = hf_greedy(model, tokenizer, encode_prompts(tokenizer, [prompt], False, "cpu"), 10, True)
        assert answer.tokens == tokens[0, : len(answer.tokens)].tolist(), prompt
        torch.testing.assert_close(answer.logits, logits[0, : len(answer.tokens)], atol=2e-5, rtol=1e-4)
    full = tiny_model(arch)  # the same weights without a window answer otherwise: the window was applied
    plain = complete(ContinuousBatcher(full, tokenizer, max_batch_size=3), requests)
    assert [a.tokens for a in plain] != [a.tokens for a in answers]


def test_a_model_with_chunked_attention_is_refused_up_front():
    from zoo.inference.kv_cache import UnsupportedCacheError

    with pytest.raises(UnsupportedCacheError, match="chunked_attention"):
        ContinuousBatcher(tiny_model("mistral", attention_chunk_size=4), tiny_tokenizer())


def test_the_kv_budget_holds_requests_back_until_rows_leave(base, adapters):
    """Budget 3 × 20 tokens: each request may need 4 + 16 columns, so three run together at most,
    the rest wait their turn in order, and every answer is what it is without a budget."""
    tokenizer = tiny_tokenizer()
    names = [*adapters, None]
    requests = [GenerationRequest([5 + i, 6, 7, 8], names[i % len(names)], 16) for i in range(7)]
    free = complete(ContinuousBatcher(served(base, adapters), tokenizer, 8), requests)
    batcher = ContinuousBatcher(served(base, adapters), tokenizer, 8, max_batch_tokens=3 * 20)
    for i, request in enumerate(requests):
        batcher.submit(i, request)
    done, widest = {}, 0
    while batcher.busy:
        done.update({u.uid: u.completion for u in batcher.step() if u.completion is not None})
        widest = max(widest, len(batcher.rows))
        assert batcher.cache_columns() <= 3 * 20
    assert widest == 3
    assert [done[i].tokens for i in range(7)] == [answer.tokens for answer in free]
    with pytest.raises(ValueError, match="KV cache budget of 60 tokens"):
        batcher.submit("big", GenerationRequest([5] * 10, None, 51))


def test_a_long_prompt_is_prefilled_in_chunks_between_decoding_steps(base, adapters):
    """A 300-token prompt arrives among 3 running requests, with chunks of 32: every step still
    gives each running request its token, no step prefills more than 32 prompt tokens, the caches
    stay within the KV budget, and every answer (logits and prompt log-probabilities included) is
    what it is without chunks."""
    tokenizer = tiny_tokenizer()
    names = list(adapters)
    short = [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i], 40) for i, p in enumerate(PROMPTS[:3])]
    long = GenerationRequest([5 + i % 200 for i in range(300)], names[3], 6, logprobs=2, prompt_logprobs=True)
    budget = 4 * (300 + 40)
    answers = {}
    for chunk in (None, 32):
        batcher = ContinuousBatcher(served(base, adapters), tokenizer, 8, True, max_batch_tokens=budget, prefill_chunk=chunk)
        for i, request in enumerate(short):
            batcher.submit(i, request)
        done = {u.uid: u.completion for u in batcher.step() if u.completion is not None}  # the short ones join
        batcher.submit("long", long)
        steps, joined = 0, None
        while batcher.busy:
            before = {row.uid: len(row.generated) for row in batcher.rows}
            updates = batcher.step()
            steps += 1
            done.update({u.uid: u.completion for u in updates if u.completion is not None})
            assert all(len(row.generated) == before[row.uid] + 1 for row in batcher.rows if row.uid in before)
            assert batcher.prefilled_last_step <= (chunk or 300)
            assert batcher.cache_columns() <= budget
            if joined is None and any(row.uid == "long" for row in batcher.rows):
                joined = steps
        assert joined == (1 if chunk is None else -(-300 // 32))  # in one step, or a chunk per step
        answers[chunk] = done
    for uid, whole in answers[None].items():
        chunked = answers[32][uid]
        assert chunked.tokens == whole.tokens, uid
        torch.testing.assert_close(chunked.logits, whole.logits, atol=2e-5, rtol=1e-4)
    whole, chunked = answers[None]["long"], answers[32]["long"]
    assert len(chunked.prompt_logprobs) == 300 and chunked.prompt_logprobs[0] is None
    for a, b in zip(whole.prompt_logprobs[1:], chunked.prompt_logprobs[1:]):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4 and [t for t, _ in a.top] == [t for t, _ in b.top]
    model = copy.deepcopy(base[0])
    hooks_for(adapters[names[3]]).ftzoo_fuse_adapter(model=model, adapter=adapters[names[3]], scale=1.0)
    with torch.inference_mode():
        reference = torch.log_softmax(model(torch.tensor([long.ids])).logits[0].float(), dim=-1)
    expected = reference[:-1].gather(1, torch.tensor(long.ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor([e.logprob for e in chunked.prompt_logprobs[1:]]), expected, atol=1e-4, rtol=0)


def test_a_long_request_gets_a_cache_of_its_own_and_the_budget_counts_each_at_its_width(base, adapters):
    """One 300-token prompt among 8 short requests, a budget of one long row and 8 short ones: with one
    cache every row is as wide as the longest, so the short ones wait while the long one runs; with
    two groups it decodes in its own and all 9 run together, the caches within the budget, the
    answers unchanged."""
    tokenizer = tiny_tokenizer()
    names = [*adapters, None]
    requests = [GenerationRequest([5 + i % 200 for i in range(300)], names[0], 6)]
    requests += [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i % len(names)], 12)
                 for i, p in enumerate(PROMPTS[:8])]  # fmt: skip
    budget = _span_of(requests[0]) + 8 * max(_span_of(r) for r in requests[1:])  # the short ones padded alike
    results = {}
    for groups in (1, 2):
        batcher = ContinuousBatcher(
            served(base, adapters), tokenizer, 16, max_batch_tokens=budget, prefill_chunk=64, max_groups=groups
        )
        for i, request in enumerate(requests):
            batcher.submit(i, request)
        done, together, most_groups = {}, 0, 0
        while batcher.busy:
            done.update({u.uid: u.completion for u in batcher.step() if u.completion is not None})
            running = [row.uid for row in [*batcher.rows, *batcher.prefilling]]
            if 0 in running:  # beside the long one
                together = max(together, len(running))
            most_groups = max(most_groups, len(batcher.groups))
            assert batcher.cache_columns() <= budget
            assert len(batcher.groups) <= groups
        results[groups] = (done, together, most_groups)
    assert results[1][1] == 1 and results[2][1] == 9 and results[2][2] == 2
    assert [results[1][0][i].tokens for i in range(9)] == [results[2][0][i].tokens for i in range(9)]


def test_requests_of_similar_width_share_one_cache_group(base, adapters):
    """Two groups allowed, requests joining one after another, each a little wider than those before
    (within ``GROUP_WIDTH_RATIO``): they all decode in one group, one forward pass per step, where
    the memory alone would have opened a second group for the first wider one."""
    tokenizer = tiny_tokenizer()
    batcher = ContinuousBatcher(served(base, adapters), tokenizer, 8, max_groups=2)
    for i in range(6):
        batcher.submit(i, GenerationRequest([5 + j for j in range(4 + 2 * i)], None, 20))
        batcher.step()
        assert len(batcher.groups) == 1
    assert len(batcher.rows) == 6


def _span_of(request):
    return len(request.ids) + request.max_new_tokens


def test_prefill_share_sizes_each_chunk_from_the_measured_decode_step(base, adapters):
    """With ``prefill_share`` a long prompt's chunks are sized from measured time: on a clock that
    counts work (a forward pass costs 20 plus one per token, a stand-in for a machine where a
    decoding step of 3 rows costs 23), no step that decodes prefills for more than twice its
    decoding time, the chunks grow from ``MIN_PREFILL_TOKENS`` to about what fits, and every answer
    (logits and prompt log-probabilities included) is what it is without chunks."""
    tokenizer = tiny_tokenizer()
    names = list(adapters)
    short = [GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i], 60) for i, p in enumerate(PROMPTS[:3])]
    long = GenerationRequest([5 + i % 200 for i in range(300)], names[3], 6, logprobs=2, prompt_logprobs=True)
    answers = {}
    for share in (None, 2.0):
        server = served(base, adapters)
        batcher = ContinuousBatcher(server, tokenizer, 8, True, prefill_chunk=None if share is None else 256,
                                    prefill_share=share)  # fmt: skip
        work = {"done": 0.0, "prefill": 0.0, "decode": 0.0}

        def count(module, args, kwargs, work=work):
            ids = kwargs["input_ids"]
            cost = 20 + ids.numel()
            work["done"] += cost
            work["decode" if ids.shape[1] == 1 else "prefill"] += cost

        server.model.register_forward_pre_hook(count, with_kwargs=True)
        batcher.clock = lambda work=work: work["done"]
        for i, request in enumerate(short):
            batcher.submit(i, request)
        done = {u.uid: u.completion for u in batcher.step() if u.completion is not None}
        batcher.submit("long", long)
        chunks = []
        while batcher.busy:
            before = {row.uid: len(row.generated) for row in batcher.rows}
            work["prefill"] = work["decode"] = 0.0
            updates = batcher.step()
            done.update({u.uid: u.completion for u in updates if u.completion is not None})
            assert all(len(row.generated) == before[row.uid] + 1 for row in batcher.rows if row.uid in before)
            if share is not None and work["prefill"]:
                assert work["decode"] == 23  # the 3 short requests, one forward pass
                assert work["prefill"] <= share * work["decode"]
                chunks.append(batcher.prefilled_last_step)
        answers[share] = done
    assert chunks[0] == MIN_PREFILL_TOKENS and 2 * 23 - 20 - 2 <= max(chunks) <= 2 * 23 - 20  # the most that fits
    assert chunks[:-1] == sorted(chunks[:-1])  # they grow towards what fits, from below
    for uid, whole in answers[None].items():
        chunked = answers[2.0][uid]
        assert chunked.tokens == whole.tokens, uid
        torch.testing.assert_close(chunked.logits, whole.logits, atol=2e-5, rtol=1e-4)
    for a, b in zip(answers[None]["long"].prompt_logprobs[1:], answers[2.0]["long"].prompt_logprobs[1:]):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4


def test_whole_prompts_join_within_admit_share_and_a_long_prompts_chunks_within_prefill_share(base, adapters):
    """On a clock that counts work (a forward pass costs 20 plus one per token), 3 requests decoding,
    then 8 short prompts and a 300-token one (the decoding step steady while it is chunked): whole prompts join up to ``admit_share`` (4) decoding
    steps' time a step, more than ``prefill_share`` (2) would let in, and the long prompt's chunks
    keep to 2."""
    tokenizer = tiny_tokenizer()
    names = list(adapters)
    server = served(base, adapters)
    batcher = ContinuousBatcher(server, tokenizer, 16, prefill_chunk=256, prefill_share=2.0, admit_share=4.0)
    work = {"done": 0.0, "whole": 0.0, "chunk": 0.0, "decode": 0.0}

    def count(module, args, kwargs):
        ids = kwargs["input_ids"]
        kind = "decode" if ids.shape[1] == 1 else "chunk" if bool((ids == 250).all()) else "whole"
        work[kind] += 20 + ids.numel()
        work["done"] += 20 + ids.numel()

    server.model.register_forward_pre_hook(count, with_kwargs=True)
    batcher.clock = lambda: work["done"]
    for i, p in enumerate(PROMPTS[:3]):
        batcher.submit(i, GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i], 80))
    batcher.step()
    for i, p in enumerate(PROMPTS[:8]):  # answers that outlast the long prompt's chunks: a steady decoding step
        batcher.submit(f"short {i}", GenerationRequest(prompt_ids(tokenizer, [p], False)[0], names[i % len(names)], 60))
    batcher.submit("long", GenerationRequest([250] * 300, None, 2))
    beyond_prefill_share = 0
    while batcher.busy:
        work["whole"] = work["chunk"] = work["decode"] = 0.0
        batcher.step()
        if work["decode"]:
            assert work["whole"] <= 4.0 * work["decode"] and work["chunk"] <= 2.0 * work["decode"]
            beyond_prefill_share += work["whole"] > 2.0 * work["decode"]
    assert beyond_prefill_share > 0


def test_prefill_share_is_checked():
    with pytest.raises(ValueError, match="prefill_share must be positive"):
        ContinuousBatcher(tiny_model("llama-gqa"), tiny_tokenizer(), prefill_share=0)
    with pytest.raises(ValueError, match="admit_share must be positive"):
        ContinuousBatcher(tiny_model("llama-gqa"), tiny_tokenizer(), admit_share=-1)
