"""The server's signal handling in one process, on a stand-in for the LitServer (no processes started)."""

from __future__ import annotations

import os
import queue
import signal
import time
from types import SimpleNamespace

import pytest
from litserve.loops.base import _SENTINEL_VALUE
from tiny_models import tiny_model, tiny_tokenizer

from zoo.adapter import BaseModelInfo
from zoo.inference import ContinuousBatcher, MixedAdapterModel, prompt_ids
from zoo.server.stopping import REPEAT, UVICORN_EXIT, stop_on_signals
from zoo.server.worker import SHUTDOWN_MARGIN, BatcherLoop


class StandIn:
    """What :func:`stop_on_signals` touches of a ``LitServer``."""

    def __init__(self) -> None:
        self.uvicorn_graceful_timeout = 2.0
        self._shutdown_event = None
        self.shutdowns = 0
        self.litapi_request_queues = {"/v1/chat/completions": queue.Queue()}

    def _perform_graceful_shutdown(self, *args: object) -> None:
        self.shutdowns += 1


@pytest.fixture
def sigint_ignored():
    """SIGINT as a shell leaves it to a background job."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_stops_the_block_even_where_it_was_ignored(sigint_ignored):
    server = StandIn()
    with stop_on_signals(server):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        pytest.fail("SIGINT did not interrupt the server")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN, "the previous handler is back"
    assert server._shutdown_event.is_set(), "LitServe's worker monitor is told"
    assert server.uvicorn_graceful_timeout == 2.0 + UVICORN_EXIT
    _queue_id, _uid, signalled, job = server.litapi_request_queues["/v1/chat/completions"].get(timeout=5)
    assert job == {"shutdown": 2.0}, "the worker is told the grace requests in flight have"
    assert 0 <= time.monotonic() - signalled < 6


def test_a_dropped_interrupt_is_delivered_again():
    """Python drops an exception raised in a callback (an at-fork hook); the signal comes again."""
    started = time.monotonic()
    with stop_on_signals(StandIn()):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # dropped, as in a callback
        time.sleep(5)
        pytest.fail("the signal was not delivered again")
    assert time.monotonic() - started < REPEAT + 2


def test_signals_change_nothing_once_the_shutdown_has_begun():
    server = StandIn()
    with stop_on_signals(server):
        server._perform_graceful_shutdown()  # LitServe's, wrapped
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    assert server.shutdowns == 1


class Gone:
    """A request queue whose manager process has ended."""

    def get(self, timeout: float | None = None) -> object:
        raise EOFError

    def get_nowait(self) -> object:
        raise BrokenPipeError


def test_the_worker_loop_stops_when_its_queue_is_gone():
    assert BatcherLoop._drain(Gone(), timeout=1.0) == [_SENTINEL_VALUE]
    assert BatcherLoop._drain(Gone(), timeout=None) == [_SENTINEL_VALUE]
    assert BatcherLoop._drain(queue.Queue(), timeout=0.01) == []


class Transport:
    """LitServe's response transport, recording what the worker sends; the worker stops after the
    first error it sends (the main process would end it then)."""

    def __init__(self, request_queue: queue.Queue) -> None:
        self.request_queue = request_queue
        self.sent: dict[str, list[dict]] = {}

    def send(self, item: tuple, consumer_id: int) -> None:
        uid, (message, *_status) = item
        self.sent.setdefault(uid, []).append(message)
        if "error" in message:
            self.request_queue.put(_SENTINEL_VALUE)


def test_the_worker_answers_what_it_cannot_finish_before_the_grace_ends():
    """After ``{"shutdown": grace}``, requests still decoding ``grace - SHUTDOWN_MARGIN`` seconds
    after the signal get a 503 (a stream: after the text it had), those that finished earlier
    their answer; so no connection is closed by uvicorn half-way."""
    model = tiny_model("llama-gqa").requires_grad_(False)
    tokenizer = tiny_tokenizer()
    batcher = ContinuousBatcher(MixedAdapterModel(model, BaseModelInfo.of(model, "tiny")), tokenizer, 4)
    lit_api = SimpleNamespace(batcher=batcher, batch_timeout=0.0, max_batch_size=4)
    requests: queue.Queue = queue.Queue()
    ids = prompt_ids(tokenizer, ["the sea is"], False)[0]

    def job(max_tokens: int, stream: bool) -> dict:
        return {"ids": ids, "adapter": None, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0,
                "seed": None, "stop": [], "stream": stream}  # fmt: skip

    grace = 3.0  # the cut at grace - SHUTDOWN_MARGIN (more than half the grace)
    signalled = time.monotonic() - (grace - SHUTDOWN_MARGIN) + 0.2  # the cut comes 0.2 s from now
    for uid, payload in [("short", job(2, False)), ("long", job(1000, True)), ("long-whole", job(1000, False))]:
        requests.put((0, uid, time.monotonic(), payload))
    requests.put((None, "shutdown", signalled, {"shutdown": grace}))
    transport = Transport(requests)
    started = time.monotonic()
    BatcherLoop().run(lit_api, "cpu", 0, requests, transport, {}, None)
    assert time.monotonic() - started < 10

    assert transport.sent["short"][-1]["finish_reason"] == "length", "finished before the cut: answered"
    for uid in ("long", "long-whole"):
        last = transport.sent[uid][-1]
        assert last["status"] == 503 and last["code"] == "server_shutdown", last
        assert "--shutdown_timeout" in last["error"]
    streamed = [m["text"] for m in transport.sent["long"][:-1]]
    assert streamed, "the stream had its text before the error"
    assert not lit_api.batcher.busy, "nothing left decoding"
