"""The server assembled on FastAPI and uvicorn: the routes, the API key, errors in OpenAI's
shape, guards on slow or large requests, request ids; and :func:`run_server`, which loads the
model, serves until SIGINT or SIGTERM, and stops within the shutdown grace.

Why not LitServe (which this server was first built on): its extension points (``LitAPI``,
``LitSpec``, ``LitLoop``) hand a worker whole requests, and a loop that batches per decoding
step, cancels a request whose client left, answers ``/load`` and ends streams with an error at
shutdown could only be written against its private queues, sentinels and shutdown internals.
FastAPI and uvicorn give that design with public API only, as vLLM's OpenAI server does: an
asyncio front end in front of one decoding loop (:mod:`zoo.server.engine`, a thread of the same
process that owns the model and the :class:`zoo.inference.ContinuousBatcher`).

One process: the event loop answers HTTP (a slow or silent client holds only its own
connection); the decoding thread computes (torch releases the GIL in its kernels).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from zoo.server.adapters import AdapterRegistry
from zoo.server.config import ServerConfig
from zoo.server.engine import Engine
from zoo.server.prompts import Prompts
from zoo.server.protocol import ApiError, validation_error
from zoo.server.routes import Frontend

log = logging.getLogger(__name__)

ROUTES = (
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "GET /v1/models",
    "POST /v1/load_lora_adapter",
    "POST /v1/unload_lora_adapter",
    "POST /tokenize",
    "POST /detokenize",
    "GET /load",
    "GET /metrics",
    "GET /health",
    "GET /docs",
    "GET /openapi.json",
)
REQUEST_ID = "X-Request-Id"


class BodyGuard:
    """Every request body at most ``max_bytes`` (413), and all of it within ``timeout`` seconds (408).

    One ASGI middleware for both, wrapping ``receive``: a client that stops half-way through
    its body is cut off instead of holding its handler forever. (Starlette's own body limit
    answers in plain text, not the OpenAI error shape, and neither has a deadline.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        declared = dict(scope["headers"]).get(b"content-length")
        size, complete = 0, False

        async def guarded() -> Message:
            nonlocal size, complete
            if complete:  # after the body: waiting for a disconnect, no deadline
                return await receive()
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.timeout:g} s (the server's --body_timeout)"
                ) from None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise self._too_large()
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guarded, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413, f"the request body is larger than this server's limit of {self.max_bytes} bytes (--max_body_bytes)"
        )


class RequestId:
    """``X-Request-Id``: the client's, echoed on the answer, or one made for the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(REQUEST_ID.lower().encode())
        request_id = given or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REQUEST_ID.lower().encode(), request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose first request's headers have not
    all arrived ``timeout`` seconds after it opened (uvicorn has no such limit of its own; the
    body has :class:`BodyGuard`'s, an idle kept-alive connection uvicorn's keep-alive timeout)."""

    class HeaderTimeout(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.header_timer = asyncio.get_running_loop().call_later(timeout, self.drop_without_headers)

        def drop_without_headers(self) -> None:
            if self.cycle is None:  # no request has been parsed on this connection
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeout


async def api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """FastAPI's own errors (404, 405, 401, 408, 413) in OpenAI's shape."""
    message = str(error.detail)
    if error.status_code == 404:
        message = f"no route {request.method} {request.url.path}; this server has {', '.join(ROUTES)}"
    elif error.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; this server has {', '.join(ROUTES)}"
    code = {401: "invalid_api_key", 408: "body_timeout", 413: "body_too_large"}.get(error.status_code)
    return await api_error(request, ApiError(error.status_code, message, code=code))


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return await api_error(request, validation_error(list(error.errors())))


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug: still an answer in OpenAI's shape (the traceback goes to the server's log)."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
    return await api_error(request, ApiError(500, f"internal error ({type(error).__name__}); see the server's log"))


def build_app(config: ServerConfig, frontend: Frontend) -> FastAPI:
    """The ASGI app: ``frontend``'s routes behind the API key, ``/health`` open (load balancers
    probe without a key), ``/docs`` and ``/openapi.json`` behind the key."""

    def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), config.api_key):
            raise HTTPException(401, "a valid API key is needed: send the header 'Authorization: Bearer <api key>'")

    app = FastAPI(title="ftzoo adapter server", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(frontend.router(authorized))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        authorized(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        authorized(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    app.add_middleware(BodyGuard, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    app.add_middleware(RequestId)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, telling the decoding loop how long requests in flight have when a
    signal stops it (uvicorn waits that long for them, then closes their connections)."""

    def __init__(self, config: uvicorn.Config, engine: Engine, grace: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace = grace

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            self.engine.begin_shutdown(self.grace)
        super().handle_exit(sig, frame)


def load(config: ServerConfig) -> tuple[Engine, Frontend]:
    """The decoding loop with the model and the ``--adapters`` loaded, and the front end over it.

    Raises:
        AdapterError: an adapter folder is missing, corrupt, of another base, or its method is
            not installed.
        ValueError: no base model is given or recorded.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    registry = AdapterRegistry(config.base_name, folder=config.adapter_folder)
    entries = [registry.add(name, path) for name, path in config.adapters.items()]
    engine = Engine(config)
    engine.load(entries)
    engine.metrics.watch(engine)
    registry.base = engine.base_info  # adapters added from now on are checked against it
    prompts = Prompts.load(config, registry, engine.base_info.name_or_path)
    return engine, Frontend(config, prompts, engine, registry)


def run_server(config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Load the model, then serve until SIGINT (Ctrl+C) or SIGTERM.

    A signal while the model loads ends the start quietly. After a signal while serving,
    requests in flight get ``config.shutdown_timeout`` seconds: those the decoding loop cannot
    finish in time get a 503 error (a stream: an error event and ``[DONE]``), then uvicorn
    closes their connections, and the function returns.
    """
    print(
        f"Serving {', '.join(config.models)} at http://{host}:{port}/v1 "
        f"(up to {config.batch_size} requests per batch); loading the model...",
        flush=True,
    )
    caught: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A signal while loading ends the start (whatever the signal did before: a shell starts a
    # background job with SIGINT ignored). From then on it is noted, and acted on once uvicorn
    # runs, which restores these handlers when it stops and raises the signal it caught again:
    # noted too, and the function returns normally.
    previous = {sig: signal.signal(sig, interrupt) for sig in SIGNALS}
    try:
        try:
            engine, frontend = load(config)
        except KeyboardInterrupt:
            return
        finally:
            for sig in SIGNALS:
                signal.signal(sig, lambda signum, frame: caught.append(signum))
        server = _Server(
            uvicorn.Config(
                build_app(config, frontend),
                host=host,
                port=port,
                log_level=log_level,
                http=header_timeout_protocol(config.header_timeout),
                lifespan="off",
                timeout_graceful_shutdown=config.shutdown_timeout,
            ),
            engine,
            config.shutdown_timeout,
        )
        engine.start()
        try:
            if not caught:
                server.run()
        finally:
            engine.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SIGNALS = (signal.SIGINT, signal.SIGTERM)
