"""zoo/loglikelihood.py: the batched, cached scorer against each request forwarded alone;
independence from batch mates; lm-eval's tokenisation rules; acc against acc_norm."""

import random

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from datamodules.choices import ChoiceItem
from zoo.loglikelihood import ItemScore, encode_pair, loglikelihoods, score_items


def naive(model, context, continuation):
    """One request forwarded alone, unpadded: the sum of log_softmax over its continuation tokens."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    positions = range(len(context) - 1, len(context) + len(continuation) - 1)
    picked = [logprobs[p, t] for p, t in zip(positions, continuation)]
    greedy = all(int(logprobs[p].argmax()) == t for p, t in zip(positions, continuation))
    return float(sum(picked)), greedy


def _requests(seed, items=9):
    """Items of 1 to 5 choices: each shares one context of 1 to 30 tokens; continuations of 1 to 9."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(items):
        context = [rng.randrange(4, 260) for _ in range(rng.randint(1, 30))]
        for _ in range(rng.randint(1, 5)):
            pairs.append((context, [rng.randrange(4, 260) for _ in range(rng.randint(1, 9))]))
    return pairs


@pytest.mark.parametrize("arch", ["llama-gqa", "mistral", "qwen2"])
def test_batched_cached_scores_equal_each_request_forwarded_alone(arch):
    model = tiny_model(arch, seed=1)
    pairs = _requests(seed=2)
    got = loglikelihoods(model, pairs, batch_size=7)
    for (context, continuation), score in zip(pairs, got):
        logprob, greedy = naive(model, context, continuation)
        assert score.logprob == pytest.approx(logprob, abs=1e-4)
        assert score.greedy == greedy


def test_continuations_with_a_shared_start_equal_each_forwarded_alone():
    """The tokens a context's continuations share are forwarded once with it: the scores are still
    each request's own, whether the continuations differ only in their last token (the adapter
    form's labels), are equal, or one is the start of another."""
    model = tiny_model("llama-gqa", seed=6)
    answer = [17, 23, 99, 5, 41]
    pairs = [([3, 8, 12, 40], answer + [k]) for k in (60, 61, 62, 63)]
    pairs += [([7, 7, 9], [30, 31]), ([7, 7, 9], [30, 31]), ([7, 7, 9], [30, 31, 32, 33]), ([7, 7, 9], [30])]
    pairs += [([50, 51], answer + [70, 71]), ([50, 51], answer + [70, 72, 73]), ([44], [11, 12, 13])]
    greedy_run = [90]  # the model's own greedy continuation: its shared start is greedy, one label is
    with torch.no_grad():
        for _ in range(4):
            greedy_run.append(int(model(torch.tensor([greedy_run])).logits[0, -1].argmax()))
    labels = {greedy_run[-1], (greedy_run[-1] + 1) % 250 + 4}
    pairs += [([90], greedy_run[1:-1] + [label]) for label in labels]
    assert sum(naive(model, c, x)[1] for c, x in pairs) == 1
    for batch_size in (1, 4, 64):
        for (context, continuation), score in zip(pairs, loglikelihoods(model, pairs, batch_size=batch_size)):
            logprob, greedy = naive(model, context, continuation)
            assert score.logprob == pytest.approx(logprob, abs=1e-4)
            assert score.greedy == greedy


def test_scores_do_not_depend_on_batch_size_or_batch_mates():
    model = tiny_model("llama-gqa", seed=3)
    pairs = _requests(seed=4, items=8)
    alone = [s.logprob for s in loglikelihoods(model, pairs, batch_size=1)]
    for batch_size in (3, 64):
        together = [s.logprob for s in loglikelihoods(model, pairs, batch_size=batch_size)]
        assert together == pytest.approx(alone, abs=1e-5)
    # other company: the first half scored among different requests, in reverse order
    others = _requests(seed=5, items=6)
    mixed = loglikelihoods(model, others + pairs[: len(pairs) // 2][::-1], batch_size=8)
    assert [s.logprob for s in mixed[len(others) :]] == pytest.approx(alone[: len(pairs) // 2][::-1], abs=1e-5)


def test_a_request_longer_than_the_window_loses_context_from_the_left():
    model = tiny_model("qwen2", seed=0)
    context, continuation = list(range(10, 40)), [50, 51, 52]
    (cut,) = loglikelihoods(model, [(context, continuation)], max_length=12)
    logprob, _ = naive(model, (context + continuation)[-13:-3], continuation)  # 13 = window + 1 tokens kept
    assert cut.logprob == pytest.approx(logprob, abs=1e-4)
    with pytest.raises(ValueError, match="request 0: continuation of 3 tokens exceeds the window 2"):
        loglikelihoods(model, [(context, continuation)], max_length=2)
    with pytest.raises(ValueError, match="request 1: the context and the continuation"):
        loglikelihoods(model, [(context, continuation), ([], continuation)])


def merging_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE with one merge, space + "y" (GPT-2's "Ġy"): a continuation " yes" encoded
    after its context differs from "yes" encoded after a context that ends with the space."""
    base = tiny_tokenizer()
    vocab = dict(base.get_vocab())
    vocab["Ġy"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "y")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_trailing_space_of_the_context_moves_to_the_continuation_as_lm_eval_does():
    tokenizer = merging_tokenizer()
    context, continuation = encode_pair(tokenizer, "Answer: ", "yes")
    assert context == tokenizer.encode("Answer:")
    assert continuation == tokenizer.encode(" yes") == [tokenizer.convert_tokens_to_ids("Ġy"), *tokenizer.encode("es")]
    assert encode_pair(tokenizer, "Answer:", " yes") == (context, continuation)
    assert encode_pair(tokenizer, "Answer:\n", "yes")[1] == tokenizer.encode("\nyes")  # any whitespace moves


def test_special_tokens_are_added_once_and_an_empty_context_is_the_bos_token():
    tokenizer = merging_tokenizer(add_bos=True)
    context, continuation = encode_pair(tokenizer, "Answer:", " yes")
    assert context[0] == 1 and context.count(1) == 1 and 1 not in continuation
    assert encode_pair(tokenizer, "<s>Answer:", " yes") == (context, continuation)  # BOS already in the text
    assert encode_pair(tokenizer, "", " yes") == ([1], tokenizer.encode(" yes", add_special_tokens=False))
    assert encode_pair(tokenizer, "", "<s> yes") == ([1], tokenizer.encode(" yes", add_special_tokens=False))


def test_acc_takes_the_largest_sum_and_acc_norm_the_largest_per_character():
    score = ItemScore(logprobs=(-6.0, -8.0), greedy=(False, False), lengths=(3, 10), gold=1)
    assert (score.prediction, score.prediction_norm) == (0, 1)  # -6 > -8, but -2.0/char < -0.8/char
    assert (score.acc, score.acc_norm) == (False, True)
    assert ItemScore((-1.0, -1.0), (False, False), (2, 2), 1).prediction == 0  # a tie: the first, as argmax


def _item(question, choices, gold, task="t"):
    return ChoiceItem(task, question, tuple(choices), tuple(f"answer{i + 1}" for i in range(len(choices))), gold, question)


def test_score_items_sums_each_choice_after_its_items_context():
    model, tokenizer = tiny_model("mistral", seed=5), tiny_tokenizer()
    items = [
        _item("Which is red?", ["a rose", "the sky", "grass"], 0),
        _item("Is ice cold?", ["yes", "no"], 0),
        _item("Pick the longest", ["x", "a much longer choice than the others", "mid length", "y"], 1),
    ]
    scored = score_items(model, tokenizer, items, "cloze", batch_size=4)
    for item, score in zip(items, scored):
        assert score.lengths == tuple(len(c) for c in item.choices) and score.gold == item.gold
        for (context, continuation), logprob in zip(item.requests("cloze"), score.logprobs):
            expected, _ = naive(model, *encode_pair(tokenizer, context, continuation))
            assert logprob == pytest.approx(expected, abs=1e-4)


def test_continuations_are_chunked_by_length_without_losing_one():
    from zoo.loglikelihood import _by_length

    lengths = [9, 1, 0, 1, 2, 2, 30, 2, 3, 0, 12] + [2] * 40
    chunks = _by_length(lengths, overhead=8)
    assert sorted(i for c in chunks for i in c) == [i for i, n in enumerate(lengths) if n]
    assert chunks[0] == [6]  # the one long continuation is not allowed to pad 45 others to 30
    for chunk in chunks:  # longest first: each chunk's first sets its padding
        assert lengths[chunk[0]] == max(lengths[i] for i in chunk)
    assert _by_length([3, 3, 3], overhead=0) == [[0, 1, 2]] and _by_length([0, 0]) == []
