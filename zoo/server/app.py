"""The server assembled: LitServe's ``LitServer`` with the OpenAI routes, the batching worker,
errors in OpenAI's shape and a guard on request bodies.

Processes (LitServe's): the main one waits; one uvicorn process answers HTTP (asyncio, so a
slow or silent client holds only its own connection); one worker process holds the model
and decodes (:mod:`zoo.server.worker`). They talk through LitServe's queues.
"""

from __future__ import annotations

import asyncio
import os

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zoo.server.config import ServerConfig
from zoo.server.prompts import Prompts
from zoo.server.protocol import ApiError, validation_error
from zoo.server.routes import OpenAIRoutes
from zoo.server.stopping import stop_on_signals
from zoo.server.worker import BatchingAPI

ROUTES = ("POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /load", "GET /health")


class BodyGuard:
    """Every request body at most ``max_bytes`` (413), and all of it within ``timeout`` seconds (408).

    One ASGI middleware for both, wrapping ``receive`` as LitServe's ``MaxSizeMiddleware``
    does: a client that stops half-way through its body is cut off instead of holding its
    handler forever. (Starlette's own body limit answers in plain text, not the OpenAI
    error shape, and neither has a deadline.)
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


async def api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """FastAPI's and LitServe's own errors (404, 405, 401, 408, 413) in OpenAI's shape."""
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
    return await api_error(request, ApiError(500, f"internal error ({type(error).__name__}); see the server's log"))


def build_server(config: ServerConfig) -> ls.LitServer:
    """The ``LitServer`` of ``config`` (start it with :func:`run_server`).

    Raises:
        AdapterError: an adapter folder is missing or its method is not installed.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the HTTP process is forked after tokenizing
    routes = OpenAIRoutes(config)
    routes.prompts = Prompts.load(config)  # a bad adapter or base is named now, before any process starts
    api = BatchingAPI(config, spec=routes)
    accelerator = "cuda" if config.device.startswith("cuda") else config.device
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1,
        workers_per_device=1,
        timeout=False,  # the routes time requests themselves (request_timeout covers decoding too)
        middlewares=[(BodyGuard, {"max_bytes": config.max_body_bytes, "timeout": config.body_timeout})],
        model_metadata={"models": config.models},
    )
    server.app.add_exception_handler(ApiError, api_error)
    server.app.add_exception_handler(HTTPException, http_error)
    server.app.add_exception_handler(RequestValidationError, invalid_request)
    server.app.add_exception_handler(Exception, internal_error)
    return server


def run_server(config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until SIGINT (Ctrl+C) or SIGTERM, then stop every process of the server.

    Requests in flight get ``config.shutdown_timeout`` seconds to finish, then their
    connections are closed (see :mod:`zoo.server.stopping`).
    """
    server = build_server(config)
    server.uvicorn_graceful_timeout = config.shutdown_timeout  # LitServe's: 30 s, and 30 s more to join uvicorn
    with stop_on_signals(server):
        print(
            f"Serving {', '.join(config.models)} at http://{host}:{port}/v1 "
            f"(up to {config.batch_size} requests per batch); loading the model...",
            flush=True,
        )
        server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)
