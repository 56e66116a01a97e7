"""Log-probabilities over HTTP: ``logprobs`` / ``top_logprobs`` on chat and completions and ``echo``
on completions equal the in-process model's to 1e-4, in OpenAI's shapes; and lm-eval's
``local-completions`` model scores a multiple-choice task through the server with the accuracy and
log-likelihoods of ftzoo's in-process scorer (:mod:`zoo.loglikelihood`)."""

from __future__ import annotations

import math

import openai
import pytest
import torch
from harness_data import write_reasoning_data
from tiny_models import tiny_tokenizer

from zoo.adapter import save_adapter
from zoo.inference import hooks_for, prompt_ids
from zoo.loglikelihood import encode_pair, loglikelihoods
from zoo.server.process import ServerProcess

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def lora(tiny):
    return tiny.adapter("lora", 3)


@pytest.fixture(scope="module")
def server(tiny, lora, tmp_path_factory):
    folder = save_adapter(lora, tmp_path_factory.mktemp("logprobs") / "lora")
    with ServerProcess(["--adapters", f"[lora={folder}]", "--threads", "1", "--batch_size", "4"]) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def fused(tiny, lora):
    """The adapter fused into a copy of the base: the in-process reference."""
    model = tiny.fresh()
    hooks_for(lora).ftzoo_fuse_adapter(model=model, adapter=lora, scale=1.0)
    return model.eval()


def reference(model, ids: list[int]) -> torch.Tensor:
    """``[len(ids), vocab]``: the log-probabilities of the token after each prefix of ``ids``."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_completion_logprobs_and_echo_equal_the_in_process_model(client, fused):
    tokenizer = tiny_tokenizer()
    prompt = tokenizer("the sea is")["input_ids"]
    reply = client.completions.create(
        model="lora", prompt=prompt, max_tokens=6, temperature=0, logprobs=3, echo=True
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs
    generated = len(logprobs.tokens) - len(prompt)
    assert generated == reply.usage.completion_tokens == 6
    ids = list(prompt)
    for _ in range(generated):  # temperature 0: the model's first choice each time
        ids.append(reference(fused, ids)[-1].argmax().item())
    expected = reference(fused, ids)
    assert logprobs.tokens == [tokenizer.decode([t]) for t in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing before the first
    for i in range(1, len(ids)):
        assert math.isclose(logprobs.token_logprobs[i], expected[i - 1, ids[i]].item(), abs_tol=TOLERANCE), i
        top = expected[i - 1].topk(3)
        alternatives = {tokenizer.decode([t]): v for t, v in zip(top.indices.tolist(), top.values.tolist())}
        alternatives.setdefault(tokenizer.decode([ids[i]]), expected[i - 1, ids[i]].item())
        assert logprobs.top_logprobs[i].keys() == alternatives.keys()
        for token, value in alternatives.items():
            assert math.isclose(logprobs.top_logprobs[i][token], value, abs_tol=TOLERANCE)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(ids))]


def test_a_streamed_echo_with_logprobs_gives_the_prompts_logprobs_as_the_answer_not_streamed(client):
    """``stream`` with ``echo`` and ``logprobs``: the first chunk is the prompt with its log-probabilities,
    and the chunks' text and ``logprobs`` (``text_offset`` included) put together are the answer's."""
    tokenizer = tiny_tokenizer()
    prompt = tokenizer("the sea is")["input_ids"]
    options = {"model": "lora", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True}
    whole = client.completions.create(**options).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**options, stream=True) if c.choices]
    first = chunks[0]
    assert first.text == tokenizer.decode(prompt) and len(first.logprobs.tokens) == len(prompt)
    assert first.logprobs.token_logprobs[0] is None
    assert "".join(c.text for c in chunks) == whole.text
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        if c.logprobs is not None:
            for key, values in merged.items():
                values += getattr(c.logprobs, key)
    assert merged["tokens"] == whole.logprobs.tokens and merged["text_offset"] == whole.logprobs.text_offset
    assert merged["token_logprobs"][0] is None and merged["top_logprobs"][0] is None
    for mine, theirs in zip(merged["token_logprobs"][1:], whole.logprobs.token_logprobs[1:]):
        assert math.isclose(mine, theirs, abs_tol=TOLERANCE)
    for mine, theirs in zip(merged["top_logprobs"][1:], whole.logprobs.top_logprobs[1:]):
        assert mine.keys() == theirs.keys() and all(math.isclose(mine[k], theirs[k], abs_tol=TOLERANCE) for k in mine)


def test_chat_logprobs_and_top_logprobs_equal_the_in_process_model(client, fused):
    tokenizer = tiny_tokenizer()
    messages = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(
        model="lora", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    prompt = prompt_ids(tokenizer, ["hello"], "chat")[0]  # the chat template, as the server renders it
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens == len(prompt)
    ids, expected = list(prompt), None
    for entry in content:
        expected = reference(fused, ids)[-1]
        token = expected.argmax().item()
        assert entry.token == tokenizer.decode([token]) and entry.bytes == list(entry.token.encode())
        assert math.isclose(entry.logprob, expected[token].item(), abs_tol=TOLERANCE)
        top = expected.topk(2)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([t]) for t in top.indices.tolist()]
        for alternative, value in zip(entry.top_logprobs, top.values.tolist()):
            assert math.isclose(alternative.logprob, value, abs_tol=TOLERANCE)
        ids.append(token)
    streamed = client.chat.completions.create(
        model="lora", messages=messages, max_tokens=5, temperature=0, logprobs=True, stream=True
    )
    pieces = [entry for chunk in streamed if chunk.choices and chunk.choices[0].logprobs for entry in
              chunk.choices[0].logprobs.content]  # fmt: skip
    assert [(p.token, round(p.logprob, 4)) for p in pieces] == [(c.token, round(c.logprob, 4)) for c in content]


def test_several_prompts_are_several_choices(client):
    reply = client.completions.create(model="base", prompt=["hello", "a"], max_tokens=3, temperature=0)
    alone = [client.completions.create(model="base", prompt=p, max_tokens=3, temperature=0) for p in ("hello", "a")]
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == [a.choices[0].text for a in alone]
    assert reply.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)


def test_lm_eval_local_completions_scores_as_in_process(server, fused, tiny, tmp_path):
    """lm-eval 0.4's ``local-completions`` (echo + logprobs, token ids) through the server: each
    choice's log-likelihood and greediness, and the accuracy, as :func:`zoo.loglikelihood.loglikelihoods`."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from tools.harness import task_manager

    task = "llm_adapters_arc_easy"
    lm = LocalCompletionsAPI(
        base_url=f"{server.url}/v1/completions",
        model="lora",
        tokenizer=str(tiny.folder),
        tokenizer_backend="huggingface",
        max_length=1024,
    )
    results = evaluate(lm=lm, task_dict=task_manager([task], str(write_reasoning_data(tmp_path))).load([task]),
                       log_samples=True)  # fmt: skip
    samples = results["samples"][task]
    assert len(samples) == 10
    tokenizer = tiny_tokenizer()
    correct = 0
    for sample in samples:
        pairs = [encode_pair(tokenizer, *arguments) for arguments in sample["arguments"]]
        mine = loglikelihoods(fused, pairs)
        theirs = [(float(r[0]), bool(r[1])) for r in sample["filtered_resps"]]
        for (logprob, greedy), expected in zip(theirs, mine):
            assert math.isclose(logprob, expected.logprob, abs_tol=TOLERANCE) and greedy == expected.greedy
        chosen = max(range(len(mine)), key=lambda i: mine[i].logprob)
        assert sample["acc"] == float(chosen == sample["target"])
        correct += chosen == sample["target"]
    assert math.isclose(results["results"][task]["acc,none"], correct / len(samples))
