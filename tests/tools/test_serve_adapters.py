"""Adapters while the server runs: vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``,
an ``--adapter_folder`` resolved on first use, ``--max_adapters`` with least-recently-used eviction;
requests in flight on an unloaded adapter finish; an adapter of another base is refused."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from tiny_models import tiny_tokenizer

from zoo.adapter import save_adapter
from zoo.inference import ContinuousBatcher, GenerationRequest, MixedAdapterModel, complete, prompt_ids, read_adapter
from zoo.server.process import ServerProcess

METHODS = {"a": "lora", "b": "s2ft", "c": "sparse", "d": "dora", "e": "full"}
"""Adapter name → its method (seeds differ too)."""


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """``a`` served from the start, ``b`` and ``c`` in the adapter folder, ``d`` and ``e`` elsewhere."""
    root = tmp_path_factory.mktemp("runtime")
    (root / "folder").mkdir()
    out = {}
    for seed, (name, method) in enumerate(METHODS.items()):
        where = root / "folder" if name in "bc" else root
        out[name] = save_adapter(tiny.adapter(method, 10 + seed), where / name)
    return out


@pytest.fixture(scope="module")
def server(folders):
    args = ["--adapters", f"[a={folders['a']}]", "--adapter_folder", str(folders["b"].parent)]
    args += ["--max_adapters", "2", "--batch_size", "4", "--threads", "1", "--max_tokens_limit", "1000"]
    with ServerProcess(args) as process:
        yield process


@pytest.fixture(scope="module")
def expected(tiny):
    """Greedy plain-template answers of ``[(prompt, method, seed, max_tokens)]`` in process."""
    tokenizer = tiny_tokenizer()

    def answer(prompt: str, name: str | None, tokens: int) -> str:
        server = MixedAdapterModel(tiny.fresh(), tiny.info)
        if name is not None:
            seed = 10 + list(METHODS).index(name)
            server.add_adapter(name, tiny.adapter(METHODS[name], seed))
        ids = prompt_ids(tokenizer, [prompt], "plain")[0]
        return complete(ContinuousBatcher(server, tokenizer, 1), [GenerationRequest(ids, name, tokens)])[0].text

    return answer


def post(server, path, body):
    request = urllib.request.Request(f"{server.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def ask(server, model, prompt="hello", tokens=6):
    status, text = post(server, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0})
    return json.loads(text)["choices"][0]["text"] if status == 200 else (status, text)


def get(server, path):
    with urllib.request.urlopen(f"{server.url}{path}", timeout=60) as reply:
        return json.loads(reply.read())


def models(server):
    return [m["id"] for m in get(server, "/v1/models")["data"]]


def test_an_adapter_in_the_folder_is_loaded_on_first_use(server, expected):
    assert models(server) == ["base", "a"]
    assert ask(server, "b") == expected("hello", "b", 6)
    assert models(server) == ["base", "a", "b"]
    status, text = post(server, "/v1/completions", {"model": "zz", "prompt": "hi"})
    assert status == 404 and "the model 'zz' does not exist" in text
    status, _ = post(server, "/v1/completions", {"model": "../folder", "prompt": "hi"})
    assert status == 404  # never a path outside the folder


def test_load_and_unload_while_a_request_runs_on_it(server, folders, expected):
    stream_body = {"model": "a", "prompt": "once upon a time", "max_tokens": 400, "temperature": 0, "stream": True}
    started, result = threading.Event(), {}

    def stream() -> None:
        request = urllib.request.Request(
            f"{server.url}/v1/completions", json.dumps(stream_body).encode(), {"Content-Type": "application/json"}
        )
        events = []
        with urllib.request.urlopen(request, timeout=300) as reply:
            for line in reply:
                if line.startswith(b"data: {"):
                    events.append(json.loads(line[6:]))
                    started.set()
        result["text"] = "".join(e["choices"][0]["text"] for e in events)
        result["finish"] = events[-1]["choices"][0]["finish_reason"]

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(120)
    status, text = post(server, "/v1/load_lora_adapter", {"lora_name": "d", "lora_path": str(folders["d"])})
    assert (status, text) == (200, "Success: LoRA adapter 'd' added successfully.")
    assert ask(server, "d") == expected("hello", "d", 6)
    status, text = post(server, "/v1/unload_lora_adapter", {"lora_name": "a"})
    assert (status, text) == (200, "Success: LoRA adapter 'a' removed successfully.")
    assert ask(server, "a")[0] == 404 and "a" not in models(server)  # new requests: gone
    thread.join(300)
    assert result["finish"] == "length" and result["text"] == expected("once upon a time", "a", 400)  # it finished
    status, _ = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(folders["a"])})
    assert status == 200 and ask(server, "a") == expected("hello", "a", 6)  # the same name, loaded again


def test_least_recently_used_adapters_leave_memory_and_come_back(server, folders, expected):
    for name in ("a", "b", "c", "d", "b", "a"):
        if name not in models(server):
            post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folders[name])})
        assert ask(server, name) == expected("hello", name, 6), name
        assert get(server, "/load")["adapters_in_memory"] <= 2
    assert set(models(server)) >= {"a", "b", "c", "d"}  # served, though not all in memory


def test_bad_loads_are_refused_with_their_reason(server, folders, other_base, tmp_path):
    other = other_base.saved("lora", tmp_path / "other", 0)
    cases = [
        ({"lora_name": "o", "lora_path": str(other)}, 400, "trained on other weights"),
        ({"lora_name": "m", "lora_path": str(tmp_path / "missing")}, 400, "no such adapter folder"),
        ({"lora_name": "base", "lora_path": str(folders["e"])}, 400, "the base model's name"),
        ({"lora_name": "b", "lora_path": str(folders["e"])}, 400, "is served already"),
        ({"lora_name": "e"}, 400, "lora_path: Field required"),
    ]
    if "b" not in models(server):
        post(server, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(folders["b"])})
    for body, status, message in cases:
        got, text = post(server, "/v1/load_lora_adapter", body)
        assert got == status and message in json.loads(text)["error"]["message"], (body, text)
    got, text = post(server, "/v1/unload_lora_adapter", {"lora_name": "nope"})
    assert got == 404 and "no adapter named 'nope'" in text
    assert "o" not in models(server) and "m" not in models(server)


def test_an_adapter_loads_beside_the_decoding_loop_while_running_streams_go_on(tiny, tmp_path, monkeypatch, expected):
    """An adapter loaded on first use is read and built in the loader thread: while its (held up)
    load runs, a running stream keeps getting tokens and the request waits (``/load``'s count);
    once loaded, the request joins and gets the adapter's answer. A load that fails answers its
    requests with the reason, and the loop goes on."""
    from zoo.server.adapters import AdapterEntry, AdapterRegistry
    from zoo.server.config import ServerConfig
    from zoo.server.engine import Engine
    from zoo.server.prompts import Job

    folder = save_adapter(tiny.adapter(METHODS["b"], 11), tmp_path / "b")
    gate, started = threading.Event(), threading.Event()
    real_read = read_adapter

    def held_up(path):
        started.set()
        assert gate.wait(60)
        return real_read(path)

    monkeypatch.setattr("zoo.server.engine.read_adapter", held_up)
    engine = Engine(ServerConfig(base_model=str(tiny.folder), threads=1, batch_size=4))
    engine.load([])
    engine.batcher.eos = set()  # the stream runs on
    entry = AdapterRegistry("base").add("b", str(folder))
    ids = prompt_ids(tiny_tokenizer(), ["hello"], "plain")[0]
    messages = {"stream": [], "b": [], "bad": []}

    def job(adapter, tokens, stream):
        return Job(ids, adapter, tokens, 0.0, 1.0, None, (), stream)

    engine.start()
    try:
        engine.submit("stream", job(None, 1000, True), messages["stream"].append)
        _wait(lambda: len(messages["stream"]) >= 3)
        engine.submit("b", job(entry, 6, False), messages["b"].append)
        assert started.wait(60)
        before = len(messages["stream"])
        _wait(lambda: len(messages["stream"]) >= before + 10)  # decoding goes on while the load is held up
        assert messages["b"] == [] and engine.state.waiting == 1 and engine.state.running == 1
        gate.set()
        _wait(lambda: messages["b"])
        assert messages["b"][0]["text"] == expected("hello", "b", 6) and "b#" in next(iter(engine.server.adapters))
        bad = AdapterEntry("bad", "bad#99", str(tmp_path / "missing"), "plain", None, "lora")
        engine.submit("bad", job(bad, 6, False), messages["bad"].append)
        _wait(lambda: messages["bad"])
        assert messages["bad"][0]["status"] == 400 and "adapter 'bad' could not be loaded" in messages["bad"][0]["error"]
        before = len(messages["stream"])
        _wait(lambda: len(messages["stream"]) > before)  # the stream still runs
    finally:
        engine.stop()


def _wait(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)
