"""zoo.server.prompts: each request in its adapter's template, and every limit refused by name."""

from __future__ import annotations

import pytest
from tiny_models import tiny_tokenizer

from datamodules.prompts import ALPACA_NO_INPUT
from zoo.inference import prompt_ids
from zoo.server.adapters import AdapterEntry, AdapterRegistry
from zoo.server.config import ServerConfig
from zoo.server.prompts import Prompts
from zoo.server.protocol import ApiError, ChatRequest, CompletionRequest

TEMPLATES = {"chatty": "chat", "alpaca": "alpaca", "plain": "plain"}


def prompts(kv_budget=None, **options):
    config = ServerConfig(adapters={name: f"/{name}" for name in TEMPLATES}, max_tokens_limit=100, **options)
    registry = AdapterRegistry("base")
    systems = {"chatty": "Be kind."}
    for name, template in TEMPLATES.items():
        registry.add_entry(AdapterEntry(name, f"{name}#0", f"/{name}", template, systems.get(name), "lora"))
    return Prompts(config, tiny_tokenizer(), registry, 256, kv_budget)


def chat(model, *messages, **fields):
    turns = [{"role": role, "content": text} for role, text in messages]
    return ChatRequest(model=model, messages=turns, **fields)


def test_each_endpoint_renders_the_adapters_template():
    p, tokenizer = prompts(), tiny_tokenizer()
    assert p.completion(CompletionRequest(model="alpaca", prompt="2+2?")).ids == tokenizer(
        ALPACA_NO_INPUT.format(instruction="2+2?")
    )["input_ids"]
    plain = prompt_ids(tokenizer, ["2+2?"], "plain")[0]
    assert p.completion(CompletionRequest(model="base", prompt="2+2?")).ids == plain
    with_system = prompt_ids(tokenizer, ["hi"], "chat", ["Be kind."])[0]
    assert p.completion(CompletionRequest(model="chatty", prompt="hi")).ids == with_system
    assert p.chat(chat("chatty", ("user", "hi"))).ids == with_system  # the recorded system prompt
    assert p.chat(chat("chatty", ("system", "Be short."), ("user", "hi"))).ids == prompt_ids(
        tokenizer, ["hi"], "chat", ["Be short."]
    )[0]  # the request's own
    assert p.chat(chat("plain", ("user", "hi"))).ids == prompt_ids(tokenizer, ["hi"], "chat")[0]  # a conversation
    alpaca = p.chat(chat("alpaca", ("system", "Be short."), ("user", "hi")))
    assert alpaca.ids == prompt_ids(tokenizer, ["Be short.\n\nhi"], "alpaca")[0]
    forced = prompts(prompt_style="plain").chat(chat("chatty", ("user", "hi")))
    assert forced.ids == prompt_ids(tokenizer, ["hi"], "plain")[0]


def test_the_job_carries_the_sampling_and_the_servers_defaults():
    job = prompts(max_new_tokens=10, temperature=0.5).completion(
        CompletionRequest(model="plain", prompt="hi", stop="x", seed=3, top_p=0.9)
    )
    got = (job.adapter.name, job.max_tokens, job.temperature, job.top_p, job.seed, job.stop)
    assert got == ("plain", 10, 0.5, 0.9, 3, ("x",))
    room = prompts(max_new_tokens=100).completion(CompletionRequest(model="base", prompt="x" * 252))
    assert room.max_tokens == 4  # no max_tokens given: what the context leaves


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (CompletionRequest(model="nope", prompt="hi"), 404, "the model 'nope' does not exist; this server has 'base'"),
        (CompletionRequest(model="base", prompt=""), 400, "prompt is empty"),
        (chat("chatty", ("user", ""), ("system", "")), 400, "every message is empty"),
        (CompletionRequest(model="base", prompt="hi", max_tokens=101), 400, "at most 100 (its --max_tokens_limit)"),
        (CompletionRequest(model="base", prompt="x" * 250, max_tokens=7), 400, "context is 256 tokens; the prompt has"),
        (CompletionRequest(model="base", prompt="x" * 256), 400, "the prompt has 256 tokens"),
        (chat("alpaca", ("user", "a"), ("assistant", "b"), ("user", "c")), 400, "single-turn 'alpaca' template"),
        (CompletionRequest(model="base", prompt="x" * 30, max_tokens=30), 400, "more KV cache than this server holds"),
    ],
)
def test_every_limit_is_refused_by_name(request_, status, message):
    p = prompts(kv_budget=50)
    with pytest.raises(ApiError) as err:
        p.chat(request_) if isinstance(request_, ChatRequest) else p.completion(request_)
    assert err.value.status == status and message in err.value.message
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_token_ids_are_taken_as_they_are_and_a_list_of_prompts_is_one_job_each():
    p = prompts()
    job = p.completion(CompletionRequest(model="alpaca", prompt=[5, 6, 7], logprobs=2, echo=True, max_tokens=1))
    assert job.ids == [5, 6, 7] and job.logprobs == 2 and job.echo  # no template around token ids
    jobs = p.completions(CompletionRequest(model="base", prompt=[[5, 6], [7]]))
    assert [j.ids for j in jobs] == [[5, 6], [7]]
    texts = p.completions(CompletionRequest(model="base", prompt=["hi", "yo"]))
    assert [j.ids for j in texts] == [prompt_ids(tiny_tokenizer(), [t], "plain")[0] for t in ("hi", "yo")]
    with pytest.raises(ApiError, match=r"prompt.1: token id 100000 is not in the vocabulary"):
        p.completions(CompletionRequest(model="base", prompt=[[5], [100000]]))
    assert p.completion(CompletionRequest(model="base", prompt="hi")).logprobs is None


def test_logprob_options_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="top_logprobs: needs logprobs: true"):
        ChatRequest(model="base", messages=[{"role": "user", "content": "hi"}], top_logprobs=2)
    with pytest.raises(ValidationError, match="a streamed request takes one prompt"):
        CompletionRequest(model="base", prompt=["a", "b"], stream=True)
    with pytest.raises(ValidationError, match="less than or equal to 20"):
        CompletionRequest(model="base", prompt="a", logprobs=21)
    assert chat("base", ("user", "hi"), logprobs=True, top_logprobs=3).logprob_count == 3
