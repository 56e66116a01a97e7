"""The decoding loop: one thread that owns the model, the adapters in memory and the batcher.

As in vLLM's OpenAI server, an asyncio front end (:mod:`zoo.server.routes`) takes requests
and a single loop decodes them; here the loop is a thread of the same process, so no queue
manager, pickling or private framework plumbing stands between them. The front end calls
:meth:`Engine.submit`, :meth:`Engine.cancel` and :meth:`Engine.call` from its event loop;
they only put a message in the loop's inbox. The loop, between two decoding steps:

* takes every message: a new request is submitted to :class:`zoo.inference.ContinuousBatcher`
  (it joins the batch at the next step), a cancel (its client left or timed out) makes it
  leave, a call (load or unload an adapter) runs;
* blocks while idle; after the first request it waits ``batch_window`` for others, so that
  requests arriving together are prefilled together;
* sends each step's new text to streamed requests at once (a callback that hands the message
  to the event loop: a slow client never holds the batch), the whole answer to others;
* publishes its state (:class:`LoopState`), which ``/load`` and ``/metrics`` read without
  waiting for a step to end.

A message is a dict: ``{"text", "logprobs"}`` while streaming (first ``{"prompt_logprobs"}`` if
the request echoes its prompt with log-probabilities), then ``{"text", "finish_reason",
"prompt_tokens", "completion_tokens", "logprobs", "prompt_logprobs"}``; ``{"error", "status",
"code"}`` if the request failed.

Adapters: a request names an adapter's registration key (:mod:`zoo.server.adapters`). One not
in memory (first asked for from ``adapter_folder``, or evicted) is read and its delta modules
built by a loader thread (:meth:`Engine.build`: it only reads the base model), while the loop
goes on decoding the running requests; the request waits for it, then joins the batch when
the loop has added it (:meth:`Engine.install`, quick). With ``max_adapters``, the least
recently used adapter that no request is using leaves memory. An adapter unloaded
(``/v1/unload_lora_adapter``) leaves memory once its last request has finished.

Shutdown: :meth:`Engine.begin_shutdown` gives the requests in flight ``grace`` seconds; those
still unfinished ``SHUTDOWN_MARGIN`` seconds before its end (at the latest half-way) get a 503
error (``code: "server_shutdown"``), so a stream ends with an error event and ``[DONE]``
before the HTTP server closes its connection.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from zoo.adapter import Adapter, AdapterError, BaseModelInfo
from zoo.inference import (
    ContinuousBatcher,
    GenerationRequest,
    MixedAdapterModel,
    Sampling,
    Update,
    load_base,
    pick_device,
    read_adapter,
)
from zoo.loading import load_tokenizer
from zoo.server.adapters import AdapterEntry
from zoo.server.config import ServerConfig, default_threads
from zoo.server.metrics import Metrics
from zoo.server.prompts import Job

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN = 1.0
"""Seconds before the end of the shutdown grace at which unfinished requests get their error:
time for the message to reach the client on a busy machine (at most half the grace)."""
IDLE_WAIT = 0.5
"""Seconds an idle loop blocks on its inbox before it looks at the shutdown clock again."""

Send = Callable[[dict[str, Any]], None]
"""Hands a message to the request's waiter (thread-safe; see :meth:`Engine.submit`)."""


@dataclass(frozen=True)
class LoopState:
    """What the loop publishes after each step (read by ``/load`` and ``/metrics``)."""

    running: int = 0
    waiting: int = 0
    running_by_adapter: dict[str, int] = field(default_factory=dict)
    waiting_by_adapter: dict[str, int] = field(default_factory=dict)
    finished: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    steps: int = 0
    adapters_in_memory: int = 0
    cpu_seconds: float = 0.0
    """CPU time of the loop's thread since it started: with torch's default of 1 thread here, the
    model's work too (with more, their share of it is in torch's own threads)."""
    prefix_cache_reused_tokens: int = 0
    """Prompt tokens taken from the prefix cache instead of prefilled."""


@dataclass
class _Route:
    send: Send
    job: Job
    name: str  # the adapter's name (or the base's), for the metrics
    arrived: float  # when the front end submitted it (monotonic)
    last_token: float | None = None
    pending: list = field(default_factory=list)  # log-probabilities not sent yet (their text is held back)
    request: GenerationRequest | None = None  # while it waits for its adapter to be loaded


class Engine:
    """The model side of the server (see the module docstring).

    Args:
        config: the server's options.
        metrics: the histograms the loop observes (a fresh set if not given).
    """

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.state = LoopState()
        self.peak_running = 0
        """The most requests decoded together since the front end last took it (``/load``)."""
        self.base_info: BaseModelInfo | None = None
        self.context = 0
        self.thread: threading.Thread | None = None
        self.batcher: ContinuousBatcher | None = None
        self.server: MixedAdapterModel | None = None
        self.routes: dict[Hashable, _Route] = {}
        self.recent: OrderedDict[str, None] = OrderedDict()  # adapter keys in memory, least recently used first
        self.forgotten: set[str] = set()  # unloaded: to leave memory once no request uses them
        self.loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftzoo-adapter-loader")
        self.loading: dict[str, list[Hashable]] = {}  # adapter key being loaded → the requests waiting for it
        self.counts = {"finished": 0, "cancelled": 0, "generated_tokens": 0, "steps": 0}
        self.shutdown_at: float | None = None
        self.shutdown_grace = 0.0
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ start and stop

    def load(self, adapters: list[AdapterEntry]) -> None:
        """Load the base and ``adapters`` (all of them, read whole: a bad one fails the start),
        keeping at most ``max_adapters`` in memory; build the batcher.

        Raises:
            AdapterError: an adapter is missing, corrupt, or of another base.
        """
        torch.set_num_threads(self.config.threads or default_threads())
        read = {entry.key: read_adapter(entry.path) for entry in adapters}
        model, info = load_base(self.config.base_model, read, self.config.dtype)
        model.to(pick_device(self.config.device))
        self.server = MixedAdapterModel(model, info)
        keep = len(read) if self.config.max_adapters is None else self.config.max_adapters
        for key, adapter in list(read.items())[:keep]:
            self.server.add_adapter(key, adapter)
            self.recent[key] = None
        del read  # the delta modules hold what serving needs
        self.base_info = info
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        tokenizer = load_tokenizer(info.name_or_path)  # the loop's own: the front end tokenizes in its threads
        self.batcher = self._batcher(tokenizer)

    def _batcher(self, tokenizer: Any) -> ContinuousBatcher:
        config, model_config = self.config, self.server.model.config
        return ContinuousBatcher(
            self.server,
            tokenizer,
            config.batch_size,
            max_batch_tokens=config.kv_budget(model_config),
            prefill_chunk=config.prefill_chunk,
            max_groups=config.kv_groups,
            prefill_share=config.prefill_share,
            prefix_cache_tokens=config.prefix_cache_tokens(model_config),
            admit_share=config.admit_share,
        )

    def start(self) -> None:
        """Run the loop in its thread."""
        self.thread = threading.Thread(target=self._run, name="ftzoo-decoding", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop (after its current step) and wait up to ``timeout`` seconds for it."""
        self.stopped.set()
        self.inbox.put(("wake",))
        self.loader.shutdown(wait=False, cancel_futures=True)
        if self.thread is not None:
            self.thread.join(timeout)

    # ------------------------------------------------------------------ the front end's calls (any thread)

    def submit(self, uid: Hashable, job: Job, send: Send) -> None:
        """Queue ``job``; its messages go to ``send`` (called from the loop's thread)."""
        self.inbox.put(("submit", uid, job, send, time.monotonic()))

    def cancel(self, uid: Hashable) -> None:
        """Drop a request (its client left or timed out); its place goes to the next."""
        self.inbox.put(("cancel", uid))

    def call(self, fn: Callable[[Engine], Any]) -> concurrent.futures.Future:
        """Run ``fn(self)`` in the loop between two steps; its result or exception in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.inbox.put(("call", fn, future))
        return future

    def begin_shutdown(self, grace: float) -> None:
        """Requests in flight have ``grace`` seconds from now (see the module docstring)."""
        self.inbox.put(("shutdown", grace, time.monotonic()))

    def take_peak(self) -> int:
        """The most requests decoded together since the last call."""
        peak, self.peak_running = self.peak_running, self.state.running
        return peak

    # ------------------------------------------------------------------ adapters (in the loop)

    def build(self, entry: AdapterEntry) -> tuple[Adapter, dict[str, torch.nn.Module]]:
        """Read ``entry``'s adapter and build its delta modules (any thread: the model is only read).

        Raises:
            AdapterError: its folder cannot be read or it does not fit the base.
        """
        adapter = read_adapter(entry.path)
        return adapter, self.server.build_adapter(entry.key, adapter)

    def install(self, entry: AdapterEntry, built: tuple[Adapter, dict[str, torch.nn.Module]]) -> None:
        """Add an adapter :meth:`build` gave (in the loop, between two steps) unless it is in memory."""
        if entry.key not in self.server.adapters:
            self.server.add_adapter(entry.key, *built)
        self._used(entry.key)

    def _used(self, key: str) -> None:
        """Mark ``key`` used now; keep at most ``max_adapters`` in memory (never ``key``)."""
        self.recent[key] = None
        self.recent.move_to_end(key)
        self._evict(keep=key)

    def forget(self, entry: AdapterEntry) -> None:
        """The adapter was unloaded: it leaves memory once no request uses it."""
        self.forgotten.add(entry.key)
        self._evict()

    def _in_use(self) -> set[str]:
        rows = [*self.batcher.rows, *self.batcher.prefilling, *self.batcher.waiting]
        return {row.request.adapter for row in rows if row.request.adapter is not None}

    def _evict(self, keep: str | None = None) -> None:
        """Drop forgotten adapters no request uses, then the least recently used past ``max_adapters``
        (while every other is in use, more stay in memory until requests finish)."""
        used = self._in_use() | {keep}
        for key in [k for k in self.forgotten if k not in used]:
            self.forgotten.discard(key)
            self.recent.pop(key, None)
            if key in self.server.adapters:
                self.server.remove_adapter(key)
        limit = self.config.max_adapters
        if limit is None:
            return
        for key in [k for k in self.recent if k not in used]:
            if len(self.server.adapters) <= limit:
                break
            del self.recent[key]
            self.server.remove_adapter(key)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                self._receive()
                if self.shutdown_at is not None and time.monotonic() >= self.shutdown_at and self.routes:
                    stopped = (
                        f"the server was stopped before this answer finished (requests in flight get "
                        f"{self.shutdown_grace:g} s: its --shutdown_timeout)"
                    )
                    self._fail_all(stopped, 503, "server_shutdown")
                if not self.batcher.busy:
                    self._publish()
                    continue
                try:
                    updates = self.batcher.step()
                except Exception as err:  # a failed step fails its batch, not the server
                    log.exception("decoding step failed")
                    self._fail_all(f"the model failed on this batch: {type(err).__name__}: {err}")
                    continue
                self.counts["steps"] += 1
                self.peak_running = max(self.peak_running, len(self.batcher.rows))
                self.metrics.batch_rows.observe(len(self.batcher.rows))
                for update in updates:
                    self._send_update(update)
                if self.forgotten or (self.config.max_adapters and len(self.server.adapters) > self.config.max_adapters):
                    self._evict()
                self._publish()
        except Exception:  # never silently: every waiting request would hang until its timeout
            log.exception("the decoding loop failed")
            self._fail_all("the server's decoding loop failed; see its log")
            raise

    def _receive(self) -> None:
        """Take the inbox's messages; block while idle; hold a new batch open ``batch_window``."""
        was_idle = not self.batcher.busy
        messages = []
        try:
            if was_idle:
                messages.append(self.inbox.get(timeout=IDLE_WAIT))
            while True:
                messages.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        if was_idle and self.config.batch_window > 0 and any(m[0] == "submit" for m in messages):
            end = time.monotonic() + self.config.batch_window
            while len(self.batcher.waiting) + len(messages) < self.config.batch_size and time.monotonic() < end:
                try:
                    messages.append(self.inbox.get(timeout=max(end - time.monotonic(), 1e-3)))
                except queue.Empty:
                    break
        for message in messages:
            self._handle(*message)

    def _handle(self, kind: str, *args: Any) -> None:
        if kind == "submit":
            self._submit(*args)
        elif kind == "cancel":
            (uid,) = args
            route = self.routes.pop(uid, None)
            self.counts["cancelled"] += self.batcher.cancel(uid) or (route is not None and route.request is not None)
        elif kind == "loaded":
            self._loaded(*args)
        elif kind == "call":
            fn, future = args
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self))
                except Exception as err:  # noqa: BLE001 - the caller gets it, whatever it is
                    future.set_exception(err)
        elif kind == "shutdown":
            grace, signalled = args
            self.shutdown_grace = grace
            self.shutdown_at = signalled + max(grace - SHUTDOWN_MARGIN, grace / 2)

    def _submit(self, uid: Hashable, job: Job, send: Send, arrived: float) -> None:
        name = job.adapter.name if job.adapter is not None else self.config.base_name
        route = _Route(send, job, name, arrived)
        request = GenerationRequest(
            ids=job.ids,
            adapter=job.adapter.key if job.adapter is not None else None,
            max_new_tokens=job.max_tokens,
            sampling=Sampling(job.temperature, job.top_p, job.seed),
            stop=job.stop,
            logprobs=job.logprobs,
            prompt_logprobs=job.echo and job.logprobs is not None,
        )
        if job.adapter is not None and job.adapter.key not in self.server.adapters:
            route.request = request  # it joins once its adapter is in memory
            self.routes[uid] = route
            self._load(job.adapter).append(uid)
            return
        self._queue(uid, request, route)

    def _queue(self, uid: Hashable, request: GenerationRequest, route: _Route) -> None:
        """Hand a request whose adapter is in memory to the batcher."""
        route.request = None
        try:
            if request.adapter is not None:
                self._used(request.adapter)
            self.batcher.submit(uid, request)
        except (ValueError, KeyError) as err:  # the front end checks first; this is a second line
            self.routes.pop(uid, None)
            _safe(route.send, {"error": str(err), "status": 400})
            return
        self.routes[uid] = route

    def _load(self, entry: AdapterEntry) -> list[Hashable]:
        """The requests waiting for ``entry``'s adapter; its load is started if it is not yet."""
        waiting = self.loading.get(entry.key)
        if waiting is None:
            waiting = self.loading[entry.key] = []
            future = self.loader.submit(self.build, entry)
            future.add_done_callback(lambda done: self.inbox.put(("loaded", entry, done)))
        return waiting

    def _loaded(self, entry: AdapterEntry, done: concurrent.futures.Future) -> None:
        """The loader thread has built ``entry``'s adapter (or failed): add it, let its requests join."""
        waiting = [uid for uid in self.loading.pop(entry.key, []) if uid in self.routes]  # not cancelled
        try:
            self.install(entry, done.result())
        except Exception as err:  # noqa: BLE001 - every waiting request gets the reason, whatever it is
            status = 400 if isinstance(err, (AdapterError, ValueError)) else 500
            log.warning("adapter %s (%s) could not be loaded: %s", entry.name, entry.path, err)
            for uid in waiting:
                route = self.routes.pop(uid)
                _safe(route.send, {"error": f"adapter {entry.name!r} could not be loaded: {err}", "status": status})
            return
        for uid in waiting:
            route = self.routes[uid]
            self._queue(uid, route.request, route)

    # ------------------------------------------------------------------ answers out

    def _send_update(self, update: Update) -> None:
        route = self.routes.get(update.uid)
        if route is None:
            return  # cancelled meanwhile
        self.counts["generated_tokens"] += 1
        now = time.monotonic()
        if route.last_token is None:
            self.metrics.time_to_first_token.observe(now - route.arrived)
        else:
            self.metrics.time_per_token.observe(now - route.last_token)
        route.last_token = now
        if route.job.stream and update.prompt_logprobs is not None:  # the echoed prompt's, before any text
            _safe(route.send, {"prompt_logprobs": update.prompt_logprobs})
        route.pending += update.logprobs
        done = update.completion
        if done is None:
            if route.job.stream and update.text:
                _safe(route.send, {"text": update.text, "logprobs": route.pending})
                route.pending = []
            return
        message = {
            "text": update.text if route.job.stream else done.text,
            "finish_reason": done.finish_reason,
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": len(done.tokens),
            "tokens": done.tokens,
            "logprobs": route.pending if route.job.stream else done.logprobs,
            "prompt_logprobs": done.prompt_logprobs,
        }
        _safe(route.send, message)
        del self.routes[update.uid]
        self.counts["finished"] += 1

    def _fail_all(self, message: str, status: int = 500, code: str | None = None) -> None:
        for route in self.routes.values():
            _safe(route.send, {"error": message, "status": status, "code": code})
        self.routes.clear()
        if self.batcher is not None:
            self.batcher = self._batcher(self.batcher.tokenizer)

    def _publish(self) -> None:
        running: dict[str, int] = {}
        waiting: dict[str, int] = {}
        batch = [*self.batcher.rows, *self.batcher.prefilling]  # a prompt being prefilled has its place
        for rows, counts in ((batch, running), (self.batcher.waiting, waiting)):
            for row in rows:
                route = self.routes.get(row.uid)
                if route is not None:
                    counts[route.name] = counts.get(route.name, 0) + 1
        loading = [route for route in self.routes.values() if route.request is not None]  # their adapter loads
        for route in loading:
            waiting[route.name] = waiting.get(route.name, 0) + 1
        self.state = replace(
            LoopState(),
            running=len(batch),
            waiting=len(self.batcher.waiting) + len(loading),
            running_by_adapter=running,
            waiting_by_adapter=waiting,
            adapters_in_memory=len(self.server.adapters),
            cpu_seconds=time.thread_time(),  # this runs in the loop's thread
            prefix_cache_reused_tokens=cache.reused_tokens if (cache := self.batcher.prefix_cache) is not None else 0,
            **self.counts,
        )


def _safe(send: Send, message: dict[str, Any]) -> None:
    """Send, unless the front end is gone (its event loop closed at shutdown)."""
    try:
        send(message)
    except RuntimeError:
        log.debug("a message for a request whose front end has closed was dropped")
