"""``python -m zoo.server`` (``tools.serve --port``): the OpenAI-compatible server, asked with the ``openai`` client.

One server (a subprocess, started once for the module) serves a tiny base model and
adapters of six methods; its answers are compared with the in-process mixed batch. A
second, impatient one (one place in its batch, a short request timeout) shows timeouts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai
import pytest
from tiny_models import tiny_tokenizer

from zoo.adapter import save_adapter
from zoo.inference import ContinuousBatcher, GenerationRequest, MixedAdapterModel, complete, prompt_ids
from zoo.server.process import ServerProcess

KEY = "sk-test-key"
SERVED = {"s2ft": None, "lora": "chat", "dora": "alpaca", "sparse": None, "full": None, "merged": "chat"}
"""Adapter (named by its method) → the prompt template it records (``None``: none recorded)."""
SYSTEMS = {"merged": "Answer briefly."}
"""Adapters trained with a system prompt (in the chat template)."""
PROMPTS = ["hello", "the sea is", "a", "12 + 7 =", "once upon a time", "xyz", "Q:", "ok then"]
LIMITS = ["--max_tokens_limit", "1000", "--max_body_bytes", "20000", "--body_timeout", "1", "--header_timeout", "1"]


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """name → (folder, adapter), each adapter with its recorded template."""
    root, out = tmp_path_factory.mktemp("served"), {}
    for seed, (method, template) in enumerate(SERVED.items()):
        adapter = tiny.adapter(method, seed)
        if template is not None:
            adapter.info["prompt_style"] = template
        if method in SYSTEMS:
            adapter.info["system_prompt"] = SYSTEMS[method]
        out[method] = (save_adapter(adapter, root / method), adapter)
    return out


@pytest.fixture(scope="module")
def server(adapters):
    spec = ", ".join(f"{name}={folder}" for name, (folder, _) in adapters.items())
    args = ["--adapters", f"[{spec}]", "--batch_size", "8", "--threads", "1", "--api_key", KEY, *LIMITS]
    with ServerProcess(args, api_key=KEY) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def in_process(tiny, adapters):
    """The in-process mixed batch: greedy answers of ``[(prompt, adapter, template, max_tokens[, system])]``
    (the system prompt: the adapter's recorded one unless given)."""
    server = MixedAdapterModel(tiny.fresh(), tiny.info)
    for name, (_, adapter) in adapters.items():
        server.add_adapter(name, adapter)
    tokenizer = tiny_tokenizer()

    def answer(requests):
        todo = []
        for prompt, adapter, template, tokens, *system in requests:
            system = system[0] if system else SYSTEMS.get(adapter) if template == "chat" else None
            todo.append(GenerationRequest(prompt_ids(tokenizer, [prompt], template, [system])[0], adapter, tokens))
        return [done.text for done in complete(ContinuousBatcher(server, tokenizer, 16), todo)]

    return answer


def model_of(adapter):
    return adapter or "base"


def completion_template(adapter):
    return SERVED[adapter] or "plain" if adapter else "plain"


def chat_template(adapter):
    return "alpaca" if adapter and SERVED[adapter] == "alpaca" else "chat"


@dataclass
class Reply:
    status_code: int
    text: str
    headers: dict = field(default_factory=dict)

    def json(self):
        return json.loads(self.text)


def send(server, path, body=None, key=KEY, headers=None):
    """A raw HTTP request (POST with a body, else GET), whatever its status."""
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"{server.url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return Reply(reply.status, reply.read().decode(), dict(reply.headers))
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read().decode(), dict(err.headers))


def post(server, path, body, key=KEY):
    return send(server, path, body, key)


def load(server):
    return send(server, "/load").json()


def test_models_lists_the_base_and_every_adapter(client, tiny):
    models = client.models.list().data
    assert [m.id for m in models] == ["base", *SERVED]
    assert {m.root for m in models} == {str(tiny.folder)}  # the base every entry runs on
    assert {m.max_model_len for m in models} == {1024} and [m.parent for m in models] == [None, *["base"] * len(SERVED)]


def test_the_openai_client_gets_the_in_process_answers_of_every_method_in_one_batch(client, server, in_process):
    names = [*SERVED, None]
    jobs = [(PROMPTS[i % len(PROMPTS)], names[i % len(names)], 4 + i % 5) for i in range(2 * len(names))]

    def ask(job, chat, stream):
        prompt, adapter, tokens = job
        args = {"model": model_of(adapter), "max_tokens": tokens, "temperature": 0, "stream": stream}
        if chat:
            reply = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **args)
            if stream:
                return "".join(c.choices[0].delta.content or "" for c in reply)
            return reply.choices[0].message.content
        reply = client.completions.create(prompt=prompt, **args)
        return "".join(c.choices[0].text for c in reply) if stream else reply.choices[0].text

    load(server)  # the peak counts from here
    for chat in (False, True):
        template = chat_template if chat else completion_template
        expected = in_process([(p, a, template(a), n) for p, a, n in jobs])
        for stream in (False, True):
            with ThreadPoolExecutor(len(jobs)) as pool:  # all at once: they share the batch
                got = list(pool.map(ask, jobs, [chat] * len(jobs), [stream] * len(jobs)))
            assert got == expected, (chat, stream)
    assert load(server)["peak_running"] > 1  # requests were decoded together
    variants = in_process([("hello", a, completion_template(a), 8) for a in names])
    assert len(set(variants)) >= 4  # the adapters change the answers: the comparison means something


def test_usage_finish_reason_stop_strings_and_seeds(client, in_process):
    full = client.completions.create(model="s2ft", prompt="hello", max_tokens=12, temperature=0)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 12
    assert full.usage.prompt_tokens == len(tiny_tokenizer()("hello")["input_ids"])
    assert full.usage.total_tokens == full.usage.prompt_tokens + 12
    text = full.choices[0].text
    assert text == in_process([("hello", "s2ft", "plain", 12)])[0]
    stop = next(c for c in text[2:] if c != "\ufffd")  # random bytes: some are not whole characters
    cut = client.completions.create(model="s2ft", prompt="hello", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="s2ft", prompt="hello", max_tokens=12, temperature=0, stop=stop, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cut.choices[0].text
    assert chunks[-1].usage.completion_tokens == cut.usage.completion_tokens
    sampled = [
        client.completions.create(model="lora", prompt="hello", max_tokens=10, temperature=1.0, top_p=0.9, seed=seed)
        for seed in (1, 1, 2)
    ]
    texts = [s.choices[0].text for s in sampled]
    assert texts[0] == texts[1] != texts[2]
    own = [{"role": "system", "content": "Say a lot."}, {"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model="merged", messages=own, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == in_process([("hello", "merged", "chat", 8, "Say a lot.")])[0]
    recorded = client.chat.completions.create(model="merged", messages=own[1:], max_tokens=8, temperature=0)
    assert recorded.usage.prompt_tokens == len(prompt_ids(tiny_tokenizer(), ["hello"], "chat", [SYSTEMS["merged"]])[0])


def test_32_parallel_requests_are_all_answered_as_one_at_a_time(client):
    names = [*SERVED, None]
    jobs = [(PROMPTS[i % len(PROMPTS)], names[i % len(names)], 3 + i % 7) for i in range(32)]

    def ask(job):
        prompt, adapter, tokens = job
        reply = client.completions.create(model=model_of(adapter), prompt=prompt, max_tokens=tokens, temperature=0)
        return reply.choices[0].text, reply.usage.completion_tokens

    with ThreadPoolExecutor(32) as pool:
        parallel = list(pool.map(ask, jobs))
    assert parallel == [ask(job) for job in jobs]


def test_bad_requests_get_their_4xx_while_good_ones_are_in_flight(server, client, in_process):
    good = [("once upon a time", "full", 300), ("hello", "lora", 300), ("xyz", None, 300)]
    expected = in_process([(p, a, completion_template(a), n) for p, a, n in good])
    results, started = {}, threading.Barrier(len(good) + 1)

    def ask_streaming(i, prompt, adapter, tokens):
        stream = client.completions.create(
            model=model_of(adapter), prompt=prompt, max_tokens=tokens, temperature=0, stream=True
        )
        pieces = []
        for n, chunk in enumerate(stream):
            pieces.append(chunk.choices[0].text)
            if n == 0:
                started.wait()
        results[i] = "".join(pieces)

    threads = [threading.Thread(target=ask_streaming, args=(i, *job)) for i, job in enumerate(good)]
    for thread in threads:
        thread.start()
    started.wait()  # every good request is decoding now
    chat = "/v1/chat/completions"
    bad = [
        ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "the model 'nope' does not exist"),
        ("/v1/completions", b'{"model": "base", "prompt": ', 400, "not valid JSON"),
        ("/v1/completions", {"model": "base", "prompt": ""}, 400, "prompt is empty"),
        (chat, {"model": "lora", "messages": [{"role": "user", "content": ""}]}, 400, "every message is empty"),
        (chat, {"model": "lora", "messages": []}, 400, "messages: List should have at least 1 item"),
        ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 1000000}, 400, "at most 1000"),
        ("/v1/completions", {"model": "base", "prompt": "x" * 1020, "max_tokens": 10}, 400, "context is 1024 tokens"),
        ("/v1/completions", {"model": "base", "prompt": "x" * 1024}, 400, "the prompt has 1024 tokens"),
        ("/v1/completions", {"model": "base", "prompt": "x" * 30000}, 413, "larger than this server's limit of 20000"),
        ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": "5"}, 400, "max_tokens: Input should be"),
        ("/v1/completions", {"model": "base", "prompt": "hi", "n": 2}, 400, "n: 2 is not supported"),
        ("/v1/completions", {"model": "base", "prompt": "hi", "temperature": 5}, 400, "temperature: Input should be"),
        ("/v1/completions", {"model": "base"}, 400, "prompt: Field required"),
        ("/v1/completion", {"model": "base", "prompt": "hi"}, 404, "no route POST /v1/completion"),
    ]
    for path, body, status, message in bad:
        reply = post(server, path, body)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()["error"]
        assert message in error["message"] and set(error) == {"message", "type", "param", "code"}, reply.text
    assert stalled_client_is_cut_off(server)
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(good))] == expected
    answer = client.completions.create(model="dora", prompt="hi", max_tokens=3, temperature=0)
    assert answer.choices[0].text == in_process([("hi", "dora", "alpaca", 3)])[0]  # the server still answers


def stalled_client_is_cut_off(server) -> bool:
    """A client that sends half its body gets a 408 after the body timeout; others were answered meanwhile."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"model": "base", '
        )
        meanwhile = post(server, "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2})
        sock.settimeout(60)
        reply = b""
        while b'"}}' not in reply and (chunk := sock.recv(4096)):
            reply += chunk
        reply = reply.decode()
    assert meanwhile.status_code == 200
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply, reply
    return True


def test_clients_that_leave_are_cancelled_and_free_their_places(server):
    before = load(server)
    streams = []
    for i in range(8):  # as many as the batch has places, each asking for 1000 tokens
        body = {"model": "base", "prompt": PROMPTS[i], "max_tokens": 1000, "temperature": 0, "stream": True}
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        request = urllib.request.Request(f"{server.url}/v1/completions", json.dumps(body).encode(), headers)
        stream = urllib.request.urlopen(request, timeout=60)
        assert stream.readline().startswith(b"data: ")  # the first event: it is running
        streams.append(stream)
    body = json.dumps({"model": "base", "prompt": "hello", "max_tokens": 1000, "temperature": 0}).encode()
    waiting = socket.create_connection(("127.0.0.1", server.port))  # a ninth, not streamed: it waits for a place
    waiting.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 120
    while load(server)["waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting.close()  # it hangs up too
    for stream in streams:
        stream.close()  # the clients hang up
    while load(server)["cancelled"] < before["cancelled"] + 9 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = load(server)
    assert after["cancelled"] == before["cancelled"] + 9 and after["finished"] == before["finished"]
    assert after["running"] == 0 and after["waiting"] == 0


def test_the_api_key_is_required(server, client):
    missing = post(server, "/v1/completions", {"model": "base", "prompt": "hi"}, key=None)
    wrong = post(server, "/v1/completions", {"model": "base", "prompt": "hi"}, key="sk-wrong")
    for reply in (missing, wrong):
        assert reply.status_code == 401
        assert reply.json()["error"]["message"].startswith("a valid API key is needed")
    assert send(server, "/v1/models", key=None).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert client.models.list().data  # the right key


def test_a_request_past_the_timeout_gets_504_and_leaves_the_batch(adapters):
    folder, _ = adapters["full"]
    args = ["--adapters", f"[full={folder}]", "--batch_size", "1", "--request_timeout", "1.5", "--threads", "1"]
    with ServerProcess(args) as impatient:
        long = {"model": "full", "prompt": "hello", "max_tokens": 1000, "temperature": 0}
        with ThreadPoolExecutor(4) as pool:  # one place, four requests of ~1000 steps: the later ones wait too long
            replies = list(pool.map(lambda _: post(impatient, "/v1/completions", long, key=None), range(4)))
        timed_out = [r for r in replies if r.status_code == 504]
        assert timed_out and all(r.status_code in (200, 504) for r in replies)
        assert "longer than this server's request timeout of 1.5 s" in timed_out[0].json()["error"]["message"]
        deadline = time.monotonic() + 120
        while sum(map(load(impatient).get, ("finished", "cancelled"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        state = load(impatient)
        assert state["finished"] + state["cancelled"] == 4 and state["running"] == state["waiting"] == 0
        assert state["cancelled"] >= 1 and state["finished"] >= len(replies) - len(timed_out)
        short = {"model": "full", "prompt": "hi", "max_tokens": 1, "temperature": 0}
        assert any(post(impatient, "/v1/completions", short, key=None).status_code == 200 for _ in range(20))


def metrics(server) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: (sample name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = send(server, "/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def test_metrics_move_as_requests_run_and_a_client_that_leaves_is_cancelled(server, client):
    before = metrics(server)
    replies = [client.completions.create(model="lora", prompt=p, max_tokens=5, temperature=0) for p in PROMPTS[:3]]
    after = metrics(server)
    tokens = sum(r.usage.completion_tokens for r in replies)
    assert after[("ftzoo_requests_finished_total", ())] == before[("ftzoo_requests_finished_total", ())] + 3
    assert after[("ftzoo_generation_tokens_total", ())] == before[("ftzoo_generation_tokens_total", ())] + tokens
    ttft = ("ftzoo_time_to_first_token_seconds_count", ())
    per_token = ("ftzoo_time_per_output_token_seconds_count", ())
    assert after[ttft] == before[ttft] + 3 and after[per_token] == before[per_token] + tokens - 3
    assert after[("ftzoo_batch_rows_count", ())] > before[("ftzoo_batch_rows_count", ())]
    assert after[("ftzoo_adapters_in_memory", ())] == len(SERVED)
    loop_cpu = ("ftzoo_decoding_loop_cpu_seconds_total", ())
    assert after[loop_cpu] > before[loop_cpu]  # the loop's thread did the decoding
    reused = ("ftzoo_prefix_cache_reused_tokens_total", ())
    start = "A long shared beginning, as a system prompt would be. "
    for end in ("First question?", "Second one?"):
        client.completions.create(model="lora", prompt=start + end, max_tokens=1, temperature=0)
    assert metrics(server)[reused] >= after[reused] + len(tiny_tokenizer()(start)["input_ids"]) - 1
    body = {"model": "dora", "prompt": "a", "max_tokens": 800, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    stream = urllib.request.urlopen(
        urllib.request.Request(f"{server.url}/v1/completions", json.dumps(body).encode(), headers), timeout=60
    )
    assert stream.readline().startswith(b"data: ")
    running = ("ftzoo_requests_running", (("model", "dora"),))
    assert metrics(server).get(running) == 1  # the front end answers while the loop decodes
    stream.close()  # the client leaves
    deadline = time.monotonic() + 60
    while metrics(server).get(running) and time.monotonic() < deadline:
        time.sleep(0.1)
    final = metrics(server)
    assert final.get(running) is None, "the stream still decodes after its client left"
    cancelled = ("ftzoo_requests_cancelled_total", ())
    assert final[cancelled] == after[cancelled] + 1
    assert final[("ftzoo_generation_tokens_total", ())] < after[("ftzoo_generation_tokens_total", ())] + 800


def test_request_ids_are_echoed_or_made(server):
    given = send(server, "/v1/models", headers={"X-Request-Id": "my-id-42"})
    assert given.headers["x-request-id"] == "my-id-42"
    made = send(server, "/v1/models").headers["x-request-id"]
    assert len(made) == 32 and made != send(server, "/v1/models").headers["x-request-id"]
    assert send(server, "/nope", headers={"X-Request-Id": "e"}).headers["x-request-id"] == "e"  # errors too


def test_tokenize_and_detokenize(server):
    tokenizer = tiny_tokenizer()
    ids = tokenizer("the sea is")["input_ids"]
    reply = post(server, "/tokenize", {"model": "s2ft", "prompt": "the sea is"}).json()
    assert reply == {"count": len(ids), "max_model_len": 1024, "tokens": ids}
    chat = post(server, "/tokenize", {"model": "lora", "messages": [{"role": "user", "content": "hello"}]}).json()
    assert chat["tokens"] == prompt_ids(tokenizer, ["hello"], "chat")[0]  # the chat template, as answered
    assert post(server, "/detokenize", {"tokens": ids}).json() == {"prompt": "the sea is"}
    bad = post(server, "/detokenize", {"tokens": [10**6]})
    assert bad.status_code == 400 and "not in the vocabulary" in bad.json()["error"]["message"]
    assert post(server, "/tokenize", {"model": "nope", "prompt": "x"}).status_code == 404
    assert post(server, "/tokenize", {"prompt": "x"}, key=None).status_code == 401


def test_health_is_open_docs_need_the_key(server):
    assert send(server, "/health", key=None).status_code == 200  # load balancers probe without a key
    for path in ("/docs", "/openapi.json", "/metrics", "/load"):
        assert send(server, path, key=None).status_code == 401, path
    assert send(server, "/docs").status_code == 200
    paths = send(server, "/openapi.json").json()["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/tokenize"} <= set(paths)


def test_a_client_that_sends_its_headers_slowly_is_dropped(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and no more
        sock.settimeout(30)
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < 10
