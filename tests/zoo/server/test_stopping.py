"""The server's signal handling in one process, on a stand-in for the LitServer (no processes started)."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest
from litserve.loops.base import _SENTINEL_VALUE

from zoo.server.stopping import REPEAT, UVICORN_EXIT, stop_on_signals
from zoo.server.worker import BatcherLoop


class StandIn:
    """What :func:`stop_on_signals` touches of a ``LitServer``."""

    def __init__(self) -> None:
        self.uvicorn_graceful_timeout = 2.0
        self._shutdown_event = None
        self.shutdowns = 0

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
