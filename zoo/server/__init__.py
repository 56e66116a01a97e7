"""An OpenAI-compatible HTTP server for many adapters at once, on FastAPI and uvicorn, with continuous batching.

``python -m zoo.server --adapters '[a=path, b=path]' --port 8000`` (or ``python -m tools.serve
... --port 8000``) serves ``/v1/chat/completions``, ``/v1/completions`` (with ``logprobs`` and
``echo``) and ``/v1/models``; a request's ``model`` names an adapter or the base model.
Requests of all adapters decode together in one batch (:class:`zoo.inference.ContinuousBatcher`:
the base runs once per step, each adapter only on its rows); a request joins the batch at the
next step and leaves it when it is done. Adapters can be loaded and unloaded while the server
runs (vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, or ``--adapter_folder``).

* :mod:`zoo.server.config`: the options;
* :mod:`zoo.server.protocol`: the OpenAI wire format and its errors;
* :mod:`zoo.server.adapters`: the adapters served, known from their metadata;
* :mod:`zoo.server.prompts`: templates, tokens and limits, checked before a request is queued;
* :mod:`zoo.server.engine`: the decoding loop (a thread owning the model and the batcher);
* :mod:`zoo.server.routes`: the routes, streaming, timeouts, cancellation;
* :mod:`zoo.server.metrics`: Prometheus ``/metrics``;
* :mod:`zoo.server.app`: the FastAPI app, its guards and errors, and :func:`run_server`
  (uvicorn; SIGINT and SIGTERM stop it within the shutdown grace);
* :mod:`zoo.server.cli`: ``python -m zoo.server``;
* :mod:`zoo.server.process`: a server in a subprocess, for tests and benchmarks.
"""

from zoo.server.app import build_app, run_server
from zoo.server.config import PromptStyle, ServerConfig

__all__ = ["PromptStyle", "ServerConfig", "build_app", "run_server"]
