"""The one generation path: :func:`zoo.inference.greedy_answers` answers each prompt as Hugging Face
``generate`` answers it alone (float32), whatever the batch size and the batch mates, on every tiny
family, on models a method rewrote for training and on a quantized base."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_generate import hf_greedy
from tiny_adapters import random_batch
from tiny_models import ARCHITECTURES, tiny_model, tiny_tokenizer

from zoo.inference import encode_prompts, greedy_answers, prompt_ids
from zoo.plugins import available_methods, method_class, method_hooks

PROMPTS = ["hello", "the sea is", "a", "12 + 7 =", "once upon a time there", "xyz", "Q:", "ok then", "b", "cd", "ZZ top"]
NEW_TOKENS = 8


def reference(model, tokenizer, prompts: list[str], new_tokens: int = NEW_TOKENS) -> list[str]:
    """``generate`` on each prompt alone (no padding at all), decoded."""
    answers = []
    for prompt in prompts:
        tokens, _ = hf_greedy(model, tokenizer, encode_prompts(tokenizer, [prompt], False, "cpu"), new_tokens)
        answers.append(tokenizer.decode(tokens[0], skip_special_tokens=True))
    return answers


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_answers_equal_generate_on_each_prompt_alone(arch):
    model, tokenizer = tiny_model(arch), tiny_tokenizer()
    expected = reference(model, tokenizer, PROMPTS)
    assert sum(bool(a) for a in expected) >= len(PROMPTS) // 2, "the tiny model should say something"
    answers = greedy_answers(model, tokenizer, prompt_ids(tokenizer, PROMPTS, False), NEW_TOKENS, batch_size=4)
    assert answers == expected
    batch = encode_prompts(tokenizer, PROMPTS, False, "cpu")  # generate on one left-padded batch, row by row
    tokens, _ = hf_greedy(model, tokenizer, batch, NEW_TOKENS)
    assert tokenizer.batch_decode(tokens, skip_special_tokens=True) == answers


def test_answers_do_not_depend_on_batch_size_or_batch_mates():
    model, tokenizer = tiny_model("llama-gqa"), tiny_tokenizer()
    ids = prompt_ids(tokenizer, PROMPTS, False)
    alone = [greedy_answers(model, tokenizer, [row], NEW_TOKENS)[0] for row in ids]
    for batch_size in (1, 3, 16):
        assert greedy_answers(model, tokenizer, ids, NEW_TOKENS, batch_size) == alone, batch_size
    others = prompt_ids(tokenizer, ["a much longer prompt than the others, to pad them", "?", "and one more"], False)
    mixed = greedy_answers(model, tokenizer, [others[0], *ids[::-1], *others[1:]], NEW_TOKENS, batch_size=5)
    assert mixed[1:-2] == alone[::-1]


@pytest.mark.parametrize("method", sorted(m for m in available_methods() if m != "merged"))
def test_models_rewritten_for_training_answer_as_generate_does(method):
    """S²FT's layers, peft's injected LoRA/DoRA layers, sparse masks, full: the model a method
    rewrote for training (as ``lightning validate`` sees it) answers through the one path as it does
    through ``generate``."""
    model, tokenizer = copy.deepcopy(tiny_model("llama-gqa")).requires_grad_(False), tiny_tokenizer()
    hooks = method_hooks(method_class(method)())
    batches = [random_batch(model.config.vocab_size, seed) for seed in range(2)]
    selection = hooks.ftzoo_select_parameters(model=model, calibration_batches=lambda: iter(batches), seed=0)
    hooks.ftzoo_rewrite_model(model=model, selection=selection)
    with torch.no_grad():
        for _, param in hooks.ftzoo_trainable_parameters(model=model):
            param.add_(0.05 * torch.randn_like(param))  # a trained update, not the identity
    model.train()  # as during fit: the one path answers in eval mode and gives the mode back
    prompts = PROMPTS[:6]
    answers = greedy_answers(model, tokenizer, prompt_ids(tokenizer, prompts, False), NEW_TOKENS, batch_size=4)
    assert model.training
    assert answers == reference(model.eval(), tokenizer, prompts)


def test_a_quantized_base_answers_as_generate_does():
    from zoo.quantization import quantize

    model, tokenizer = quantize(tiny_model("llama-gqa").requires_grad_(False), "nf4"), tiny_tokenizer()
    answers = greedy_answers(model, tokenizer, prompt_ids(tokenizer, PROMPTS, False), NEW_TOKENS, batch_size=4)
    assert answers == reference(model, tokenizer, PROMPTS)


def test_a_plain_model_has_no_adapters_to_name():
    model, tokenizer = tiny_model("llama-gqa"), tiny_tokenizer()
    with pytest.raises(KeyError, match="'math' is not loaded.*none"):
        greedy_answers(model, tokenizer, prompt_ids(tokenizer, ["x"], False), 2, adapters=["math"])
    with pytest.raises(ValueError, match="2 adapters for 1 prompts"):
        greedy_answers(model, tokenizer, prompt_ids(tokenizer, ["x"], False), 2, adapters=[None, None])
