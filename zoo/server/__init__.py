"""An OpenAI-compatible HTTP server for many adapters at once, on LitServe, with continuous batching.

``python -m tools.serve --adapters '[a=path, b=path]' --port 8000`` serves
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``; a request's ``model`` names
an adapter or the base model. Requests of all adapters decode together in one batch
(:class:`zoo.inference.ContinuousBatcher`: the base runs once per step, each adapter only
on its rows); a request joins the batch at the next step and leaves it when it is done.

* :mod:`zoo.server.config`: the options;
* :mod:`zoo.server.protocol`: the OpenAI wire format and its errors;
* :mod:`zoo.server.prompts`: templates, tokens and limits, checked before a request is queued;
* :mod:`zoo.server.routes`: the routes (a LitServe spec), streaming, timeouts, cancellation;
* :mod:`zoo.server.worker`: the inference worker's loop;
* :mod:`zoo.server.app`: the ``LitServer`` assembled, error handlers, the body guard;
* :mod:`zoo.server.stopping`: SIGINT and SIGTERM stop every process of the server within seconds.
"""

from zoo.server.app import build_server, run_server
from zoo.server.config import PromptStyle, ServerConfig

__all__ = ["PromptStyle", "ServerConfig", "build_server", "run_server"]
