"""The OpenAI-compatible routes, as a LitServe spec: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``
(and ``/load``: the batch's state).

LitServe's own ``OpenAISpec`` serves chat completions only, ignores ``seed``, always says
``finish_reason: "stop"`` and keeps per-request state on the spec object; this spec uses
the same LitServe plumbing (the request queue to the worker, the response buffer it fills)
with its own routes. For each request it:

1. lets FastAPI validate the body (:mod:`zoo.server.protocol`; errors become 400s);
2. renders and tokenizes the prompt and checks the limits (:mod:`zoo.server.prompts`),
   in a thread so a long prompt never stalls the event loop;
3. queues the job for the worker and waits for its messages (:mod:`zoo.server.worker`),
   for at most ``request_timeout`` seconds (then 504);
4. answers in one JSON body, or streams server-sent events when ``stream`` is true.

A client that disconnects or times out has its request cancelled in the worker, so its
place in the batch goes to the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import ResponseBufferItem
from starlette.background import BackgroundTask

from zoo.server import protocol
from zoo.server.config import ServerConfig
from zoo.server.prompts import Job, Prompts
from zoo.server.protocol import ApiError, ChatRequest, CompletionRequest

DISCONNECT_POLL = 0.5
"""Seconds between checks whether a waiting (non-streaming) client is still there."""
CLIENT_CLOSED = 499
"""Status logged for a request whose client left before its answer (nginx's convention)."""


class OpenAIRoutes(LitSpec):
    """The routes of one server (its prompts and limits are loaded in :meth:`setup`)."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.config = config
        self.prompts: Prompts | None = None
        self.created = int(time.time())

    @property
    def stream(self) -> bool:
        return True  # answers come back as a stream of messages from the worker

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/load", self.load, ["GET"])

    def setup(self, server: Any) -> None:
        """Connect to LitServe's queues; load the tokenizer and limits (before the HTTP processes fork)."""
        super().setup(server)
        if self.prompts is None:
            self.prompts = Prompts.load(self.config)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["prompts"] = None  # the worker process needs none of it
        return state

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, body: ChatRequest, request: Request) -> Any:
        job = await asyncio.to_thread(self.prompts.chat, body)
        return await self._answer(job, body.model, body, request, chat=True)

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        job = await asyncio.to_thread(self.prompts.completion, body)
        return await self._answer(job, body.model, body, request, chat=False)

    async def models(self) -> dict[str, Any]:
        return protocol.model_list(self.config.models, self.config.base_name, self.created)

    async def load(self) -> dict[str, Any]:
        """The worker's state: requests running and waiting now; since the start, requests finished
        and requests cancelled (their clients left or timed out); since the last ``/load``, the
        most requests decoded together (``peak_running``)."""
        uid = uuid.uuid4().hex
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        self.response_buffer[uid] = item
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), {"load": True}))
        try:
            await asyncio.wait_for(item.event.wait(), self.config.request_timeout)
        except TimeoutError:
            raise ApiError(504, "the inference worker did not answer", code="timeout") from None
        finally:
            self.response_buffer.pop(uid, None)
        message, _status = item.response_queue.popleft()
        return {**message, "batch_size": self.config.batch_size}

    # ------------------------------------------------------------------ one request

    async def _answer(
        self, job: Job, model: str, body: ChatRequest | CompletionRequest, request: Request, chat: bool
    ) -> Any:
        pending = Pending(self, uuid.uuid4().hex)
        self.request_queue.put((self.response_queue_id, pending.uid, time.monotonic(), job.payload()))
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout
        messages = self._messages(pending, deadline, None if job.stream else request)
        if job.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(pending.uid, model, messages, chat, include_usage)
            cleanup = BackgroundTask(pending.close)  # runs however the stream ends, even if it never started
            return StreamingResponse(events, media_type="text/event-stream", background=cleanup)
        async with contextlib.aclosing(messages):
            async for message in messages:
                if "finish_reason" in message:
                    build = protocol.chat_completion if chat else protocol.text_completion
                    text, finish = message["text"], message["finish_reason"]
                    return JSONResponse(build(pending.uid, model, text, finish, *_counts(message)))
        return Response(status_code=CLIENT_CLOSED)  # the client left; nobody reads this

    async def _messages(
        self, pending: Pending, deadline: float, waiting: Request | None
    ) -> AsyncIterator[dict[str, Any]]:
        """The worker's messages for a request until the final one; cancels the request if it ends early.

        Raises:
            ApiError: 504 past the deadline; the worker's error.
        """
        loop, item = asyncio.get_running_loop(), pending.item
        try:
            while True:
                while item.response_queue:
                    message, _status = item.response_queue.popleft()
                    if "error" in message:
                        pending.finished = True
                        raise ApiError(message.get("status", 500), message["error"], code=message.get("code"))
                    pending.finished = "finish_reason" in message
                    yield message
                    if pending.finished:
                        return
                item.event.clear()
                left = deadline - loop.time()
                if left <= 0:
                    raise ApiError(
                        504,
                        f"the answer took longer than this server's request timeout of "
                        f"{self.config.request_timeout:g} s",
                        code="timeout",
                    )
                try:
                    await asyncio.wait_for(item.event.wait(), min(left, DISCONNECT_POLL) if waiting else left)
                except TimeoutError:
                    if waiting is not None and await waiting.is_disconnected():
                        return  # the request is cancelled below
        finally:
            pending.close()

    async def _events(
        self, uid: str, model: str, messages: AsyncIterator[dict[str, Any]], chat: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: chunks of text, the finish reason, the usage if asked, ``[DONE]``."""
        chunk: Callable[..., dict[str, Any]]
        if chat:

            def chunk(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                return protocol.chat_chunk(uid, model, delta, finish)

            yield _sse(chunk(None, None, role=True))
        else:

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                return protocol.text_chunk(uid, model, text or "", finish)

        try:
            async for message in messages:
                if "finish_reason" not in message:
                    yield _sse(chunk(message["text"], None))
                    continue
                if message["text"]:
                    yield _sse(chunk(message["text"], None))
                last = chunk(None, message["finish_reason"])
                yield _sse(last)
                if include_usage:
                    yield _sse(protocol.usage_chunk(last, *_counts(message)))
        except ApiError as err:  # the status line is sent already: the error is the last event
            yield _sse(err.body())
        finally:
            await messages.aclose()
        yield "data: [DONE]\n\n"


class Pending:
    """One request between the HTTP process and the worker: where its messages arrive, and
    its clean-up (once, whichever way it ends): forget its buffer, and unless it finished,
    cancel it in the worker so that its place in the batch goes to the next request."""

    def __init__(self, routes: OpenAIRoutes, uid: str) -> None:
        self.routes = routes
        self.uid = uid
        self.item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        routes.response_buffer[uid] = self.item
        self.finished = False
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.routes.response_buffer.pop(self.uid, None)
        if not self.finished:  # timed out, disconnected, or the stream was closed
            cancel = (self.routes.response_queue_id, self.uid, time.monotonic(), {"cancel": True})
            self.routes.request_queue.put(cancel)


def _counts(message: dict[str, Any]) -> tuple[int, int]:
    return message["prompt_tokens"], message["completion_tokens"]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
