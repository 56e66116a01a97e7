"""SIGINT (Ctrl+C) and SIGTERM stop ``python -m zoo.server`` (what ``tools.serve --port`` runs)
within its shutdown grace plus 5 seconds: idle, with streams in flight, while the model loads,
beside a CPU hog, and when the server was started with SIGINT ignored (as a shell starts a
background job: the case that used to run on until it was killed)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from zoo.server.process import ServerProcess

GRACE = 2.0
"""The servers' ``--shutdown_timeout`` (the default)."""
BOUND = GRACE + 5.0
"""Seconds a stop may take: the grace for requests in flight, and 5 s to close and exit."""


@pytest.fixture
def server(tiny_llama_dir) -> Iterator[ServerProcess]:
    process = ServerProcess(["--base_model", str(tiny_llama_dir), "--threads", "1", "--max_tokens_limit", "1000"])
    yield process
    process.stop(timeout=1)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """What ``command &`` in a script does to the job: SIGINT ignored, and inherited."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_seconds(server: ServerProcess, send: Callable[[], None]) -> float:
    """Seconds from ``send()`` until the server's process and all its children are gone (inf: not within BOUND)."""
    started = time.monotonic()
    send()
    while time.monotonic() - started < BOUND:
        if server.proc.poll() is not None and not server.processes():
            return time.monotonic() - started
        time.sleep(0.05)
    return math.inf


def check_stopped(server: ServerProcess, seconds: float, what: str) -> None:
    log = server.log_tail(60)
    print(f"{what}: the server and its processes were gone {seconds:.2f} s after the signal")
    assert seconds < BOUND, f"{what}: not stopped within {BOUND:g} s; still running: {server.processes()}\n{log}"
    assert server.proc.returncode == 0, log


def test_sigint_stops_a_server_started_with_sigint_ignored(server):
    with sigint_ignored():
        server.launch()
    server.wait_ready()
    assert len(server.processes()) == 1, "one process: the HTTP front end and the decoding thread"
    seconds = stop_seconds(server, lambda: server.proc.send_signal(signal.SIGINT))
    check_stopped(server, seconds, "SIGINT, idle")
    assert "Traceback" not in server.log_tail(200)


def _long_stream(server: ServerProcess, model: str) -> urllib.request.Request:
    """A streamed completion of up to 1,000 tokens: still running when the server is stopped."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1000, "stream": True, "temperature": 0}
    return urllib.request.Request(f"{server.url}/v1/completions", json.dumps(body).encode(),
                                  {"Content-Type": "application/json"})  # fmt: skip


def test_ctrl_c_with_a_stream_in_flight(server):
    """Ctrl+C signals the whole process group; the stream ends within the grace, with its last
    events: the finish reason, or the worker's shutdown error (never a connection cut half-way)."""
    server.start()
    first, ended = threading.Event(), {}

    def stream() -> None:
        request = _long_stream(server, "base")
        lines = []
        try:
            with urllib.request.urlopen(request, timeout=2 * BOUND) as reply:
                for line in reply:
                    first.set()
                    lines.append(line)
        except OSError as err:  # the connection closed half-way
            ended["error"] = repr(err)
        ended["done"] = b"data: [DONE]\n" in lines
        ended["lines"] = lines
        ended["at"] = time.monotonic()
        first.set()

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    assert first.wait(BOUND), "the stream did not start"
    assert "at" not in ended, "the stream ended before the signal: nothing was in flight"
    signalled = time.monotonic()
    seconds = stop_seconds(server, lambda: os.killpg(server.proc.pid, signal.SIGINT))
    client.join(BOUND)
    assert "at" in ended, "the stream was still open after the server stopped"
    assert "error" not in ended and ended["done"], f"the stream was cut: {ended}"
    events = [json.loads(line[6:]) for line in ended["lines"] if line.startswith(b"data: {")]
    last = events[-1]
    if "error" in last:
        assert last["error"]["code"] == "server_shutdown", last
        outcome = "ended by the shutdown error"
    else:
        assert last["choices"][0]["finish_reason"] == "length", last
        outcome = "finished"
    print(f"the stream {outcome} {ended['at'] - signalled:.2f} s after Ctrl+C, then [DONE]")
    check_stopped(server, seconds, "Ctrl+C, a stream in flight")


def test_sigterm_while_the_model_loads(server):
    server.launch()
    deadline = time.monotonic() + 120
    while "loading the model" not in server.log_tail() and time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log_tail()
        time.sleep(0.05)
    seconds = stop_seconds(server, lambda: server.proc.send_signal(signal.SIGTERM))
    check_stopped(server, seconds, "SIGTERM while loading")
    # (a worker that was being spawned at that moment may print an EOFError as it ends)


@contextlib.contextmanager
def cpu_hog(processes: int = 2) -> Iterator[None]:
    """Busy loops on every core of a 2-core machine: a stop must not depend on a quiet one."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_sigint_under_load_beside_a_cpu_hog(tiny, tmp_path):
    """The test removed in 535c337 (LitServe's server did not stop within 30 s on a busy CI
    machine), back with streams decoding and the cores busy: the server ends within the grace
    plus 5 s, and every stream ends with its last events."""
    from zoo.adapter import save_adapter

    folder = save_adapter(tiny.adapter("lora", 0), tmp_path / "lora")
    server = ServerProcess(["--adapters", f"[lora={folder}]", "--threads", "1", "--max_tokens_limit", "1000"])
    server.start()
    ends: list[bool] = []
    started = threading.Barrier(5)

    def stream() -> None:
        request = _long_stream(server, "lora")
        lines = []
        try:
            with urllib.request.urlopen(request, timeout=4 * BOUND) as reply:
                for line in reply:
                    if not lines:
                        started.wait()
                    lines.append(line)
        except OSError:
            pass
        ends.append(b"data: [DONE]\n" in lines)

    clients = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
    try:
        with cpu_hog():
            for client in clients:
                client.start()
            started.wait(4 * BOUND)
            seconds = stop_seconds(server, lambda: server.proc.send_signal(signal.SIGINT))
            for client in clients:
                client.join(BOUND)
        check_stopped(server, seconds, "SIGINT, 4 streams in flight, 2 CPU hogs")
        assert ends == [True] * 4, f"streams cut without [DONE]: {ends}"
    finally:
        server.stop(timeout=1)
