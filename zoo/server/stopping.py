"""Stopping the server: SIGINT (Ctrl+C) and SIGTERM end all its processes within seconds.

The processes, all LitServe's: the main one (waits), the HTTP process (uvicorn, forked from
it), the queue manager (forked), the inference worker (spawned). LitServe's graceful
shutdown runs in the main process on ``KeyboardInterrupt``: it stops the HTTP process first
(SIGTERM; uvicorn lets requests in flight finish for ``uvicorn_graceful_timeout`` seconds,
then closes their connections), then the worker (SIGTERM), then the queue manager.

What :func:`stop_on_signals` adds, and why:

* both signals raise ``KeyboardInterrupt`` in the main process, installed whatever they were
  before: a shell starts background jobs (``python -m tools.serve ... &`` in a script, a CI
  runner, a job queue) with SIGINT *ignored*, Python then installs no ``KeyboardInterrupt``
  for it, and LitServe never heard of the signal: the server ran on until it was killed;
* the forked processes inherit the handler; there a signal is left to the main process,
  which stops them in order (a Ctrl+C reaches every process of the group; the queue manager
  must outlive the HTTP process). If the main process is gone, the default action applies;
* LitServe waits for the HTTP process as long as uvicorn waits for requests in flight; after
  the signal it waits ``UVICORN_EXIT`` seconds longer, for uvicorn to close the connections
  and end by itself rather than be killed at the moment it would have;
* the signal is delivered again every ``REPEAT`` seconds until LitServe's shutdown has begun:
  Python drops a ``KeyboardInterrupt`` that lands in a callback (an at-fork hook while
  LitServe forks its processes); later signals change nothing, the shutdown being bounded;
* the inference worker is told how long requests in flight have (``{"shutdown": grace}`` on
  its request queue, :mod:`zoo.server.worker`), so that it answers those it cannot finish
  with an error before uvicorn closes their connections: a stream ends with an error event
  and ``[DONE]``, not cut half-way;
* LitServe's worker monitor (a thread of the main process) is told the server is stopping,
  so it does not report the worker that the shutdown ends as crashed and start a second
  shutdown;
* a signal that LitServe does not catch (one while loading) kills whatever processes are
  left, instead of leaving the main process waiting for the worker at exit.

The worker ignores SIGINT itself (:meth:`zoo.server.worker.BatchingAPI.setup`), so that it
decodes the requests in flight until the main process ends it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litserve as ls

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
UVICORN_EXIT = 5.0
"""Seconds uvicorn may take to end after its wait for requests in flight (it takes about 2: its
application shutdown and the thread reading LitServe's response queue wait up to 1 s each)."""
REPEAT = 1.0
"""Seconds between deliveries of the stop signal until the main process acts on it."""


@contextmanager
def stop_on_signals(server: ls.LitServer) -> Iterator[None]:
    """Run ``server`` inside: SIGINT or SIGTERM stops it and every process it started.

    A ``KeyboardInterrupt`` that leaves the block ends quietly: the server was asked to stop.
    """
    stop = _Stop(server)
    previous = {sig: signal.signal(sig, stop.handle) for sig in SIGNALS}
    others = set(multiprocessing.active_children())
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        stop.begun = True
        _kill([child for child in multiprocessing.active_children() if child not in others])
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Stop:
    """The signal handler of the server's processes, and what it knows of the shutdown."""

    def __init__(self, server: ls.LitServer) -> None:
        self.server = server
        self.main = os.getpid()
        self.signal: int | None = None
        """The first stop signal."""
        self.begun = False
        """LitServe's shutdown has begun (or the block has been left): a signal changes nothing now."""
        shutdown = server._perform_graceful_shutdown

        def begin(*args: Any, **kwargs: Any) -> None:
            self.begun = True
            shutdown(*args, **kwargs)

        server._perform_graceful_shutdown = begin

    def handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.main:
            _in_child(self.main, signum)
            return
        if self.begun:
            return  # the shutdown is under way, and bounded
        if self.signal is None:
            self.signal = signum
            stopping = threading.Event()
            stopping.set()
            self.server._shutdown_event = stopping  # the monitor thread looks at this one from now on
            grace = self.server.uvicorn_graceful_timeout
            self.server.uvicorn_graceful_timeout += UVICORN_EXIT  # uvicorn has its wait; this is the join's
            threading.Thread(target=self._tell_worker, args=(grace, time.monotonic()), daemon=True).start()
            threading.Thread(target=self._repeat, name="ftzoo-stop", daemon=True).start()
        raise KeyboardInterrupt(f"signal {signum}")

    def _tell_worker(self, grace: float, signalled: float) -> None:
        """Tell the worker requests in flight have ``grace`` seconds from ``signalled``.

        From a thread: the queue is a manager's proxy, whose calls must not run inside a
        signal handler that may have interrupted another call on it.
        """
        for request_queue in self.server.litapi_request_queues.values():
            try:
                request_queue.put((None, "shutdown", signalled, {"shutdown": grace}))
            except Exception:  # the queue manager is gone: so is every request
                log.debug("could not tell the worker the server is stopping", exc_info=True)

    def _repeat(self) -> None:
        """Deliver the signal again until the main thread acts on it.

        Python reports and drops an exception raised in a callback: a ``KeyboardInterrupt``
        that lands in an at-fork hook (LitServe forks its processes while loading) or in a
        ``__del__`` would stop nothing.
        """
        main = threading.main_thread().ident
        while True:
            time.sleep(REPEAT)
            if self.begun:
                return
            signal.pthread_kill(main, self.signal)


def _in_child(main: int, signum: int) -> None:
    """A signal in a process forked from the main one: the main one stops it, unless it is gone."""
    if os.getppid() == main:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _kill(children: list[multiprocessing.process.BaseProcess], timeout: float = 5.0) -> None:
    """Kill the server's processes that are still alive (none after LitServe's own shutdown)."""
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout)
