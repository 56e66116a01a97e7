"""``python -m zoo.server``: the OpenAI-compatible server from the command line.

Every field of :class:`zoo.server.ServerConfig` is a flag of the same name (``--batch_size``,
``--max_adapters``, ...), beside ``--adapters '[name=path, ...]'``, ``--host``, ``--port`` and
``--log_level``::

    python -m zoo.server --adapters '[math=runs/math/adapter, cs=runs/cs/adapter]' --port 8000

``python -m tools.serve --port`` is the same server (the tool also answers JSONL files).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any, Literal

from zoo.cli import one_line_errors
from zoo.inference import parse_named
from zoo.server.app import run_server
from zoo.server.config import ServerConfig


def server_config(adapters: list[str] | None = None, **options: Any) -> ServerConfig:
    """The server's config: ``adapters`` as ``name=path`` (or ``path``: named by its folder) and
    :class:`ServerConfig`'s fields; ``api_key`` defaults to the ``FTZOO_API_KEY`` environment variable."""
    config = ServerConfig(adapters=parse_named(adapters or []), **options)
    if config.api_key is None and os.environ.get("FTZOO_API_KEY"):
        config = replace(config, api_key=os.environ["FTZOO_API_KEY"])
    return config


def serve(
    adapters: list[str] | None = None,
    port: int = 8000,
    host: str = "127.0.0.1",
    log_level: Literal["debug", "info", "warning", "error"] = "warning",
    **options: Any,
) -> None:
    """Serve adapters over HTTP (OpenAI-compatible) until SIGINT or SIGTERM.

    Args:
        adapters: adapter folders as ``name=path`` (or ``path``: named by its folder).
        port: the port to listen on.
        host: the address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: all).
        log_level: the server's log level.
        options: the fields of :class:`zoo.server.ServerConfig`, each its own flag.
    """
    run_server(server_config(adapters, **options), host, port, log_level)


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    with one_line_errors():
        CLI(serve, as_positional=False, args=args)


def exit_now(code: int = 0) -> None:
    """End the process without Python's teardown of torch, transformers and FastAPI (2-3 s of CPU,
    more on a busy machine) once every thread that matters has stopped."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
