"""The routes: OpenAI's ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``; vLLM's
``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/tokenize``, ``/detokenize``; and
``/load`` (the batch's state), ``/metrics`` (Prometheus) and ``/health``.

For each completion request the front end:

1. lets FastAPI validate the body (:mod:`zoo.server.protocol`; errors become 400s);
2. renders and tokenizes the prompt and checks the limits (:mod:`zoo.server.prompts`),
   in a thread so a long prompt never stalls the event loop;
3. submits the job to the decoding loop (:mod:`zoo.server.engine`) and waits for its
   messages, for at most ``request_timeout`` seconds (then 504);
4. answers in one JSON body, or streams server-sent events when ``stream`` is true.

A client that disconnects or times out has its request cancelled in the loop, so its place in
the batch goes to the next request at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask

from zoo.adapter import AdapterError
from zoo.server import protocol
from zoo.server.adapters import AdapterRegistry
from zoo.server.config import ServerConfig
from zoo.server.engine import Engine
from zoo.server.prompts import Job, Prompts
from zoo.server.protocol import ApiError, ChatRequest, CompletionRequest

DISCONNECT_POLL = 0.5
"""Seconds between checks whether a waiting (non-streaming) client is still there."""
CLIENT_CLOSED = 499
"""Status logged for a request whose client left before its answer (nginx's convention)."""


class LoadAdapter(BaseModel):
    """``POST /v1/load_lora_adapter`` (vLLM's body)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadAdapter(BaseModel):
    """``POST /v1/unload_lora_adapter`` (vLLM's body)."""

    model_config = ConfigDict(extra="allow")
    lora_name: str


class Tokenize(BaseModel):
    """``POST /tokenize``: a prompt, or chat messages in the model's template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[protocol.ChatMessage] | None = None
    add_special_tokens: bool = True


class Detokenize(BaseModel):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[int]


class Frontend:
    """The routes of one server, over its prompts and its decoding loop.

    Args:
        config: the server's options.
        prompts: templates, tokenizer and limits.
        engine: the decoding loop (loaded).
        adapters: the adapters served.
    """

    def __init__(self, config: ServerConfig, prompts: Prompts, engine: Engine, adapters: AdapterRegistry) -> None:
        self.config = config
        self.prompts = prompts
        self.engine = engine
        self.adapters = adapters
        self.created = int(time.time())
        self.admin = asyncio.Lock()  # one adapter load or unload at a time

    def router(self, auth: Callable[..., Any]) -> APIRouter:
        """The routes that need the API key (``auth``, a dependency)."""
        router = APIRouter(dependencies=[Depends(auth)])
        router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        router.add_api_route("/v1/completions", self.completions, methods=["POST"])
        router.add_api_route("/v1/models", self.models, methods=["GET"])
        router.add_api_route("/v1/load_lora_adapter", self.load_adapter, methods=["POST"])
        router.add_api_route("/v1/unload_lora_adapter", self.unload_adapter, methods=["POST"])
        router.add_api_route("/tokenize", self.tokenize, methods=["POST"])
        router.add_api_route("/detokenize", self.detokenize, methods=["POST"])
        router.add_api_route("/load", self.load, methods=["GET"])
        router.add_api_route("/metrics", self.metrics, methods=["GET"])
        return router

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, body: ChatRequest, request: Request) -> Any:
        job = await asyncio.to_thread(self.prompts.chat, body)
        return await self._answer([job], body.model, body, request, chat=True)

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        jobs = await asyncio.to_thread(self.prompts.completions, body)
        return await self._answer(jobs, body.model, body, request, chat=False)

    async def models(self) -> dict[str, Any]:
        names = [self.config.base_name, *self.adapters.names]
        root = self.engine.base_info.name_or_path
        return protocol.model_list(names, self.config.base_name, self.created, root, self.prompts.context)

    async def load(self) -> dict[str, Any]:
        """The loop's state: requests running and waiting now; since the start, requests finished
        and requests cancelled (their clients left or timed out); since the last ``/load``, the
        most requests decoded together (``peak_running``); the loop thread's CPU seconds."""
        state = self.engine.state
        return {
            "running": state.running,
            "waiting": state.waiting,
            "finished": state.finished,
            "cancelled": state.cancelled,
            "peak_running": self.engine.take_peak(),
            "batch_size": self.config.batch_size,
            "adapters_in_memory": state.adapters_in_memory,
            "loop_cpu_seconds": state.cpu_seconds,
            "prefix_cache_reused_tokens": state.prefix_cache_reused_tokens,
        }

    async def metrics(self) -> Response:
        """Prometheus metrics (:mod:`zoo.server.metrics`)."""
        return Response(self.engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def load_adapter(self, body: LoadAdapter) -> PlainTextResponse:
        """Serve the adapter folder ``lora_path`` as ``lora_name`` (read and checked now)."""
        async with self.admin:
            try:
                entry = await asyncio.to_thread(self.adapters.describe, body.lora_name, body.lora_path)
                if body.lora_name in self.adapters.entries or body.lora_name == self.config.base_name:
                    raise ValueError(f"the model {body.lora_name!r} is served already; unload it first")
                built = await asyncio.to_thread(self.engine.build, entry)  # beside the decoding loop
                await asyncio.wrap_future(self.engine.call(lambda engine: engine.install(entry, built)))
                self.adapters.add_entry(entry)
            except (AdapterError, ValueError) as err:
                raise ApiError(400, str(err), param="lora_path", code="adapter_error") from err
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_adapter(self, body: UnloadAdapter) -> PlainTextResponse:
        """Stop serving ``lora_name``; its requests in flight finish first."""
        async with self.admin:
            try:
                entry = self.adapters.remove(body.lora_name)
            except KeyError:
                raise ApiError(
                    404, f"no adapter named {body.lora_name!r} is served", param="lora_name", code="model_not_found"
                ) from None
            await asyncio.wrap_future(self.engine.call(lambda engine: engine.forget(entry)))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def tokenize(self, body: Tokenize) -> dict[str, Any]:
        """vLLM's ``/tokenize``: the prompt's token ids (chat messages: in the adapter's chat template)."""
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt or messages", param="prompt")
        model = body.model or self.config.base_name
        if body.messages is not None:
            chat = ChatRequest(model=model, messages=body.messages)
            ids = (await asyncio.to_thread(self.prompts.chat, chat)).ids
        else:
            self.prompts.adapter(model)  # a 404 for an unknown model
            ids = self.prompts.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"count": len(ids), "max_model_len": self.prompts.context, "tokens": ids}

    async def detokenize(self, body: Detokenize) -> dict[str, Any]:
        vocab = len(self.prompts.tokenizer)
        bad = [token for token in body.tokens if not 0 <= token < vocab]
        if bad:
            raise ApiError(400, f"tokens: {bad[0]} is not in the vocabulary (0 to {vocab - 1})", param="tokens")
        return {"prompt": self.prompts.tokenizer.decode(body.tokens)}

    # ------------------------------------------------------------------ one request

    async def _answer(
        self, jobs: list[Job], model: str, body: ChatRequest | CompletionRequest, request: Request, chat: bool
    ) -> Any:
        uid = uuid.uuid4().hex
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout
        pendings = [Pending(self.engine, f"{uid}-{i}", job) for i, job in enumerate(jobs)]
        if jobs[0].stream:
            pending = pendings[0]
            messages = self._messages(pending, deadline, None)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(uid, model, pending.job, messages, chat, include_usage)
            cleanup = BackgroundTask(pending.close)  # runs however the stream ends, even if it never started
            return StreamingResponse(events, media_type="text/event-stream", background=cleanup)
        finals = await asyncio.gather(*(self._final(p, deadline, request) for p in pendings))
        if any(final is None for final in finals):
            for pending in pendings:
                pending.close()
            return Response(status_code=CLIENT_CLOSED)  # the client left; nobody reads this
        prompt_tokens = sum(f["prompt_tokens"] for f in finals)
        completion_tokens = sum(f["completion_tokens"] for f in finals)
        tokenizer = self.prompts.tokenizer
        if chat:
            final = finals[0]
            logprobs = protocol.chat_logprobs(tokenizer, final["logprobs"]) if final["logprobs"] is not None else None
            answer = protocol.chat_completion(
                uid, model, final["text"], final["finish_reason"], prompt_tokens, completion_tokens, logprobs
            )
            return JSONResponse(answer)
        choices = [self._choice(job, final) for job, final in zip(jobs, finals)]
        return JSONResponse(protocol.text_completion(uid, model, choices, prompt_tokens, completion_tokens))

    def _choice(self, job: Job, final: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        """A completion's ``(text, finish_reason, logprobs)``; with ``echo``, the prompt first."""
        tokenizer, text, logprobs = self.prompts.tokenizer, final["text"], None
        tokens = final["tokens"][: len(final["logprobs"])] if final["logprobs"] is not None else final["tokens"]
        if job.echo:
            text = tokenizer.decode(job.ids) + text
        if job.logprobs is not None:
            entries: list = list(final["logprobs"])
            if job.echo:
                entries = [*final["prompt_logprobs"], *entries]
                tokens = [*job.ids, *tokens]
            logprobs = protocol.completion_logprobs(tokenizer, entries, tokens)
        return text, final["finish_reason"], logprobs

    async def _final(self, pending: Pending, deadline: float, request: Request) -> dict[str, Any] | None:
        """The last message of a request not streamed (``None``: its client left)."""
        messages = self._messages(pending, deadline, request)
        async with contextlib.aclosing(messages):
            async for message in messages:
                if "finish_reason" in message:
                    return message
        return None

    async def _messages(self, pending: Pending, deadline: float, waiting: Request | None) -> AsyncIterator[dict]:
        """The loop's messages for a request until the final one; cancels the request if it ends early.

        Raises:
            ApiError: 504 past the deadline; the loop's error.
        """
        loop = asyncio.get_running_loop()
        pending.submit(loop)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise ApiError(
                        504,
                        f"the answer took longer than this server's request timeout of "
                        f"{self.config.request_timeout:g} s",
                        code="timeout",
                    )
                try:
                    message = await asyncio.wait_for(
                        pending.queue.get(), min(left, DISCONNECT_POLL) if waiting else left
                    )
                except TimeoutError:
                    if waiting is not None and await waiting.is_disconnected():
                        return  # the request is cancelled below
                    continue
                if "error" in message:
                    pending.finished = True
                    raise ApiError(message.get("status", 500), message["error"], code=message.get("code"))
                pending.finished = "finish_reason" in message
                yield message
                if pending.finished:
                    return
        finally:
            pending.close()

    async def _events(
        self,
        uid: str,
        model: str,
        job: Job,
        messages: AsyncIterator[dict[str, Any]],
        chat: bool,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        """Server-sent events: chunks of text, the finish reason, the usage if asked, ``[DONE]``."""
        tokenizer = self.prompts.tokenizer
        chunk: Callable[..., dict[str, Any]]
        if chat:

            def chunk(text: str | None, finish: str | None, logprobs: list | None, role: bool = False) -> dict:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                shaped = protocol.chat_logprobs(tokenizer, logprobs) if logprobs and job.logprobs is not None else None
                return protocol.chat_chunk(uid, model, delta, finish, shaped)

            yield _sse(chunk(None, None, None, role=True))
        else:
            offset = 0  # text_offset goes on from chunk to chunk, as in the answer not streamed

            def chunk(text: str | None, finish: str | None, logprobs: list | None, tokens: list | None = None) -> dict:
                nonlocal offset
                shaped = None
                if logprobs and job.logprobs is not None:
                    tokens = tokens if tokens is not None else [e.token for e in logprobs]
                    shaped = protocol.completion_logprobs(tokenizer, logprobs, tokens, offset)
                    offset = shaped["text_offset"][-1] + len(shaped["tokens"][-1])
                return protocol.text_chunk(uid, model, text or "", finish, shaped)

            if job.echo and job.logprobs is None:  # with logprobs: once the prompt's are known
                yield _sse(chunk(tokenizer.decode(job.ids), None, None))

        try:
            async for message in messages:
                if "prompt_logprobs" in message and "finish_reason" not in message:  # echo with logprobs
                    yield _sse(chunk(tokenizer.decode(job.ids), None, message["prompt_logprobs"], job.ids))
                    continue
                if "finish_reason" not in message:
                    yield _sse(chunk(message["text"], None, message["logprobs"]))
                    continue
                if message["text"] or message["logprobs"]:
                    yield _sse(chunk(message["text"], None, message["logprobs"]))
                last = chunk(None, message["finish_reason"], None)
                yield _sse(last)
                if include_usage:
                    yield _sse(protocol.usage_chunk(last, message["prompt_tokens"], message["completion_tokens"]))
        except ApiError as err:  # the status line is sent already: the error is the last event
            yield _sse(err.body())
        finally:
            await messages.aclose()
        yield "data: [DONE]\n\n"


class Pending:
    """One request between the front end and the decoding loop: where its messages arrive, and
    its clean-up (once, whichever way it ends): unless it finished, cancel it in the loop so
    that its place in the batch goes to the next request."""

    def __init__(self, engine: Engine, uid: str, job: Job) -> None:
        self.engine = engine
        self.uid = uid
        self.job = job
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.submitted = False
        self.finished = False
        self.closed = False

    def submit(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.submitted:
            return
        self.submitted = True
        put = self.queue.put_nowait
        self.engine.submit(self.uid, self.job, lambda message: loop.call_soon_threadsafe(put, message))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.submitted and not self.finished:  # timed out, disconnected, or the stream was closed
            self.engine.cancel(self.uid)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
