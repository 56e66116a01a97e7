"""The inference worker: LitServe's worker process, running one :class:`ContinuousBatcher`.

LitServe starts the worker as its own process and calls :meth:`BatchingAPI.setup` there,
which loads the base model and the adapters once. Its stock loops batch by collecting
``max_batch_size`` requests, run ``predict`` on them to the end and only then take the next
batch, so a short answer would wait for the longest one of its batch. :class:`BatcherLoop`
is a ``LitLoop`` that batches per decoding step instead:

* between two steps it takes every message from the request queue: a new request is
  submitted to the batcher (it joins at the next step), a cancel (its client left or timed
  out) makes it leave;
* an idle worker blocks on the queue; after the first request it waits ``batch_timeout``
  (``--batch_window``) for others, so that requests arriving together are prefilled together;
* each step's new text goes back at once for streamed requests; other requests get one
  message when they finish.

A message back is a dict: ``{"text"}`` while streaming, then ``{"text", "finish_reason",
"prompt_tokens", "completion_tokens"}``; ``{"error", "status", "code"}`` if the request failed. A
``{"load": true}`` message is answered at once with the batcher's state (``GET /load``).

When the server is stopped, its main process sends ``{"shutdown": grace}``
(:mod:`zoo.server.stopping`): the worker goes on decoding, and the requests still unfinished
``grace - SHUTDOWN_MARGIN`` seconds later get a 503 error (``code: "server_shutdown"``), so
that a stream ends with an error event and ``[DONE]`` before the HTTP side closes its
connection at ``grace``, instead of being cut with no last event.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import time
from collections.abc import Hashable
from typing import Any

import litserve as ls
import torch
from fastapi import HTTPException, Request
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from zoo.inference import (
    ContinuousBatcher,
    GenerationRequest,
    MixedAdapterModel,
    Sampling,
    Update,
    load_base,
    read_adapter,
)
from zoo.loading import load_tokenizer
from zoo.server.config import ServerConfig

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN = 1.0
"""Seconds before the HTTP side's end of the shutdown grace at which unfinished requests get
their error: time for the message to reach the client on a busy machine (at most half the grace)."""


class BatchingAPI(ls.LitAPI):
    """The model side of the server: loads the base and adapters in the worker; checks the API key.

    Args:
        config: the server's options.
        spec: the OpenAI routes (:class:`zoo.server.routes.OpenAIRoutes`).
    """

    def __init__(self, config: ServerConfig, spec: ls.specs.base.LitSpec) -> None:
        super().__init__(
            max_batch_size=config.batch_size,
            batch_timeout=config.batch_window,
            stream=True,
            loop=BatcherLoop(),
            spec=spec,
        )
        self.config = config
        self.batcher: ContinuousBatcher | None = None

    def setup(self, device: str) -> None:
        # The server's main process ends this worker once the HTTP side has stopped: a Ctrl+C
        # that reaches the whole process group must not end it first (requests in flight get
        # the shutdown's grace to finish), nor interrupt a step with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        adapters = {name: read_adapter(path) for name, path in self.config.adapters.items()}
        model, info = load_base(self.config.base_model, adapters, self.config.dtype)
        model.to(device)
        server = MixedAdapterModel(model, info)
        for name, adapter in adapters.items():
            server.add_adapter(name, adapter)
        del adapters  # the delta modules hold what serving needs
        budget = self.config.kv_budget(model.config)
        self.batcher = ContinuousBatcher(server, load_tokenizer(info.name_or_path), self.max_batch_size, False, budget)

    def authorize(self, request: Request) -> None:
        """A FastAPI dependency of every route (LitServe's hook): ``Authorization: Bearer <api_key>``."""
        if self.config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.config.api_key):
            raise HTTPException(401, "a valid API key is needed: send the header 'Authorization: Bearer <api key>'")

    def predict(self, x: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("BatcherLoop drives the ContinuousBatcher; predict is not used")


class BatcherLoop(LitLoop):
    """Iteration-level batching in the worker process (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[Hashable, tuple[int, bool, int]] = {}  # uid → (response queue, streamed, prompt tokens)
        self.counts = {"finished": 0, "cancelled": 0, "peak_running": 0}
        self.shutdown_at: float | None = None
        """When the server is stopping: the moment unfinished requests get their error."""
        self.shutdown_grace = 0.0

    def run(
        self,
        lit_api: BatchingAPI,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: dict,
        callback_runner: Any,
    ) -> None:
        batcher = lit_api.batcher
        server_pid = os.getppid()
        while True:
            if not self._receive(lit_api, request_queue, transport) or os.getppid() != server_pid:
                return  # the server stops, or its main process is gone (killed): nobody is left to answer
            if self.shutdown_at is not None and time.monotonic() >= self.shutdown_at and self.routes:
                stopped = (
                    f"the server was stopped before this answer finished (requests in flight get "
                    f"{self.shutdown_grace:g} s: its --shutdown_timeout)"
                )
                self._fail_all(transport, stopped, 503, "server_shutdown")
                lit_api.batcher = batcher = _emptied(batcher)
            if not batcher.busy:
                continue
            try:
                updates = batcher.step()
            except Exception as err:  # a failed step fails its batch, not the server
                log.exception("decoding step failed")
                self._fail_all(transport, f"the model failed on this batch: {type(err).__name__}: {err}")
                lit_api.batcher = batcher = _emptied(batcher)
                continue
            self.counts["peak_running"] = max(self.counts["peak_running"], len(batcher.rows))
            for update in updates:
                self._send_update(transport, update)

    # ------------------------------------------------------------------ requests in

    def _receive(self, lit_api: BatchingAPI, request_queue: Any, transport: Any) -> bool:
        """Take the queued messages; block while idle; hold a new batch open ``batch_timeout``.

        Returns:
            ``False`` when the server is shutting down (or its queue manager is gone).
        """
        batcher = lit_api.batcher
        was_idle = not batcher.rows
        messages = self._drain(request_queue, timeout=1.0 if not batcher.busy else None)
        if messages and was_idle and lit_api.batch_timeout > 0:
            end = time.monotonic() + lit_api.batch_timeout
            while len(batcher.waiting) + len(messages) < lit_api.max_batch_size and time.monotonic() < end:
                messages += self._drain(request_queue, timeout=end - time.monotonic(), first_only=True)
        for message in messages:
            if message == _SENTINEL_VALUE:
                return False
            self._handle(batcher, transport, *message)
        return True

    @staticmethod
    def _drain(request_queue: Any, timeout: float | None, first_only: bool = False) -> list:
        """Every message in the queue; with ``timeout``, wait that long for the first.

        A queue that fails (its manager process has ended: the server is gone) ends the list
        with the stop message, so the loop ends instead of spinning on the error.
        """
        messages = []
        try:
            if timeout is not None:
                messages.append(request_queue.get(timeout=max(timeout, 1e-3)))
                if first_only:
                    return messages
            while True:
                messages.append(request_queue.get_nowait())
        except queue.Empty:
            return messages
        except (EOFError, OSError):
            return [*messages, _SENTINEL_VALUE]

    def _handle(
        self, batcher: ContinuousBatcher, transport: Any, queue_id: int, uid: str, sent: float, job: dict
    ) -> None:
        if job.get("cancel"):
            self.counts["cancelled"] += batcher.cancel(uid)
            self.routes.pop(uid, None)
            return
        if "shutdown" in job:
            self.shutdown_grace = grace = float(job["shutdown"])
            self.shutdown_at = sent + max(grace - SHUTDOWN_MARGIN, grace / 2)  # one monotonic clock for all processes
            return
        if job.get("load"):
            load = {"running": len(batcher.rows), "waiting": len(batcher.waiting), **self.counts}
            self.counts["peak_running"] = len(batcher.rows)  # the peak is since the last look
            self.put_response(transport, queue_id, uid, load, LitAPIStatus.OK, LoopResponseType.STREAMING)
            return
        request = GenerationRequest(
            ids=job["ids"],
            adapter=job["adapter"],
            max_new_tokens=job["max_tokens"],
            sampling=Sampling(job["temperature"], job["top_p"], job["seed"]),
            stop=tuple(job["stop"]),
        )
        self.routes[uid] = (queue_id, job["stream"], len(job["ids"]))
        try:
            batcher.submit(uid, request)
        except (ValueError, KeyError) as err:  # the HTTP side checks first; this is a second line
            self._send(transport, uid, {"error": str(err), "status": 400})
            self.routes.pop(uid, None)

    # ------------------------------------------------------------------ answers out

    def _send_update(self, transport: Any, update: Update) -> None:
        if update.uid not in self.routes:
            return  # cancelled meanwhile
        _, streamed, prompt_tokens = self.routes[update.uid]
        done = update.completion
        if done is None:
            if streamed and update.text:
                self._send(transport, update.uid, {"text": update.text})
            return
        message = {
            "text": update.text if streamed else done.text,
            "finish_reason": done.finish_reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(done.tokens),
        }
        self._send(transport, update.uid, message)
        del self.routes[update.uid]
        self.counts["finished"] += 1

    def _fail_all(self, transport: Any, message: str, status: int = 500, code: str | None = None) -> None:
        for uid in list(self.routes):
            self._send(transport, uid, {"error": message, "status": status, "code": code})
        self.routes.clear()

    def _send(self, transport: Any, uid: Hashable, message: dict[str, Any]) -> None:
        queue_id = self.routes[uid][0]
        self.put_response(transport, queue_id, uid, message, LitAPIStatus.OK, LoopResponseType.STREAMING)


def _emptied(batcher: ContinuousBatcher) -> ContinuousBatcher:
    """A batcher like ``batcher`` with no requests (after its requests were answered with an error)."""
    return ContinuousBatcher(batcher.server, batcher.tokenizer, batcher.max_batch_size, False, batcher.max_batch_tokens)
