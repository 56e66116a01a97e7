"""Batched greedy generation where every request names its adapter, many adapters per batch.

Nothing is fused: the base model runs once per batch and each adapter's small delta
modules run on its own requests (:mod:`zoo.inference.mixed`). From Python::

    server = MixedAdapterModel(model, BaseModelInfo.of(model, "smollm2-135m"))
    server.add_adapter("math", load_adapter("runs/math/adapter"))
    answers = generate_mixed(server, tokenizer, [Request("2+2=", "math"), Request("Hi", None)])

From the command line, a JSONL file of requests ``{"prompt": ..., "adapter": "name" or
null, "max_new_tokens": ...}`` in, a JSONL file of answers out (same order)::

    python -m tools.serve --adapters '[math=runs/math/adapter, code=runs/code/adapter]' \\
        --requests requests.jsonl --output answers.jsonl --batch_size 16

or an OpenAI-compatible HTTP server (:mod:`zoo.server`; ``python -m zoo.server`` is the same):
``--port 8000`` serves ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, and a
request's ``model`` names the adapter (or ``base``)::

    python -m tools.serve --adapters '[math=runs/math/adapter, code=runs/code/adapter]' --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "math", "messages": [{"role": "user", "content": "2+2="}], "temperature": 0}'

Both modes decode with :class:`zoo.inference.ContinuousBatcher`: up to ``--batch_size``
requests of any adapters in one batch; a finished request leaves it and a waiting one joins.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from zoo.cli import one_line_errors
from zoo.inference import (
    ContinuousBatcher,
    GenerationRequest,
    MixedAdapterModel,
    Template,
    complete,
    load_base,
    pick_device,
    prompt_ids,
    read_adapter,
)
from zoo.loading import load_tokenizer
from zoo.outputs import atomic_file
from zoo.server import PromptStyle, ServerConfig, run_server
from zoo.server.cli import exit_now, server_config


@dataclass
class Request:
    """One generation request."""

    prompt: str
    adapter: str | None = None
    """Name of a loaded adapter; ``None`` for the base model."""
    max_new_tokens: int | None = None
    """Default: the server's."""


@dataclass
class Answer:
    """The greedy continuation of one request."""

    prompt: str
    adapter: str | None
    text: str
    tokens: list[int]
    logits: torch.Tensor | None = field(default=None, repr=False)
    """``[len(tokens), vocab]`` when asked for (not written to JSONL)."""


def generate_mixed(
    server: MixedAdapterModel,
    tokenizer: Any,
    requests: list[Request],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    template: PromptStyle | bool = False,
    logits: bool = False,
    max_batch_tokens: int | None = None,
) -> list[Answer]:
    """Answer requests greedily, in order, each with its own adapter: up to ``batch_size`` of
    them decode together in one batch, and a finished request's place goes to the next
    (:class:`zoo.inference.ContinuousBatcher`, the batching the HTTP server uses).

    Args:
        server: the base model with the adapters loaded.
        tokenizer: the base model's tokenizer.
        requests: the requests.
        batch_size: requests decoded together at most (mixed adapters).
        max_new_tokens: default length of an answer.
        template: the prompt template of every request (``True``: ``chat``, ``False``:
            ``plain``), or ``adapter``: each request in the template its adapter was
            trained with (recorded in the adapter; ``plain`` for the base model).
        logits: also return each answer's logits.
        max_batch_tokens: the KV cache's budget in tokens (see :class:`zoo.inference.ContinuousBatcher`).

    Raises:
        KeyError: a request names an adapter that is not loaded.
        ValueError: a prompt is empty in its template, or needs more than the KV budget alone.
    """
    unknown = sorted({r.adapter for r in requests if r.adapter is not None and r.adapter not in server.adapters})
    if unknown:
        raise KeyError(f"requests name adapters that are not loaded: {unknown} (loaded: {sorted(server.adapters)})")
    templates = [_template(server, r.adapter, template) for r in requests]
    systems = [server.system_prompts[r.adapter] if template == "adapter" and r.adapter else None for r in requests]
    ids = prompt_ids(tokenizer, [r.prompt for r in requests], templates, systems)
    for number, (request, row) in enumerate(zip(requests, ids)):
        if not row:
            raise ValueError(f"request {number}: the prompt is empty (no tokens in its template)")
    todo = [GenerationRequest(row, r.adapter, r.max_new_tokens or max_new_tokens) for r, row in zip(requests, ids)]
    batcher = ContinuousBatcher(server, tokenizer, batch_size, keep_logits=logits, max_batch_tokens=max_batch_tokens)
    return [
        Answer(request.prompt, request.adapter, done.text, done.tokens, done.logits)
        for request, done in zip(requests, complete(batcher, todo))
    ]


def _template(server: MixedAdapterModel, adapter: str | None, template: PromptStyle | bool) -> Template:
    if isinstance(template, bool):
        return "chat" if template else "plain"
    if template == "adapter":
        return server.templates[adapter] if adapter is not None else "plain"
    return template


def read_requests(path: str | Path, known: set[str]) -> list[Request]:
    """Read a JSONL file of requests.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not a JSON object with a non-empty string ``prompt``, a string or null
            ``adapter`` among ``known``, and a positive integer ``max_new_tokens`` if any.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such requests file")
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from err
        requests.append(_request(raw, where, known))
    return requests


def _request(raw: Any, where: str, known: set[str]) -> Request:
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
        raise ValueError(f"{where}: a request is an object with a string 'prompt'")
    if not raw["prompt"]:
        raise ValueError(f"{where}: prompt is empty")
    adapter, length = raw.get("adapter"), raw.get("max_new_tokens")
    if adapter is not None and adapter not in known:
        raise ValueError(f"{where}: adapter {adapter!r} is not loaded (loaded: {sorted(known) or 'none'})")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise ValueError(f"{where}: max_new_tokens must be a positive integer, got {length!r}")
    return Request(raw["prompt"], adapter, length)


def serve(
    adapters: list[str] | None = None,
    requests: str | None = None,
    output: str | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    chat: bool = False,
    log_level: Literal["debug", "info", "warning", "error"] = "warning",
    **options: Any,
) -> list[dict[str, Any]]:
    """Serve adapters over HTTP (OpenAI-compatible), or answer a JSONL file of requests.

    Args:
        adapters: adapter folders as ``name=path`` (or ``path``: named by its folder).
        requests: JSONL file: one ``{"prompt", "adapter", "max_new_tokens"}`` object a line.
        output: JSONL file of answers ``{"prompt", "adapter", "text", "tokens"}``, in
            request order; written only when every request is answered.
        port: serve HTTP on this port instead (``/v1/chat/completions``,
            ``/v1/completions``, ``/v1/models``; a request's ``model`` names an adapter or
            ``base_name``).
        host: HTTP: the address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: all).
        chat: every prompt in the tokenizer's chat template (``--prompt_style chat``).
        log_level: HTTP: the server's log level.
        options: the fields of :class:`zoo.server.ServerConfig`, each its own flag
            (``--batch_size``, ``--dtype``, ``--kv_cache_gb``, ...; their defaults and help are
            that class's). ``api_key`` defaults to the ``FTZOO_API_KEY`` environment variable.
            Answering a file uses ``base_model``, ``dtype``, ``device``, ``batch_size``,
            ``max_new_tokens``, ``kv_cache_gb``, ``prompt_style`` and ``threads``.

    Returns:
        The answers written (empty when serving HTTP).
    """
    if (port is None) == (requests is None or output is None) or (port is not None and requests is not None):
        raise ValueError("give --requests and --output to answer a file, or --port to serve HTTP")
    config = server_config(adapters, **options)
    if chat:
        config = replace(config, prompt_style="chat")
    if port is not None:  # the server checks the adapters (metadata, then tensors) before it listens
        run_server(config, host, port, log_level)
        return []
    return answer_file(config, requests, output)


def answer_file(config: ServerConfig, requests: str, output: str) -> list[dict[str, Any]]:
    """Answer the JSONL file ``requests`` with the adapters and batching of ``config``; write ``output``.

    Returns:
        The answers written.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    loaded = {name: read_adapter(path) for name, path in config.adapters.items()}
    todo = read_requests(requests, set(loaded))
    model, info = load_base(config.base_model, loaded, config.dtype)
    model.to(pick_device(config.device))
    tokenizer = load_tokenizer(info.name_or_path)
    server = MixedAdapterModel(model, info)
    for name, adapter in loaded.items():
        server.add_adapter(name, adapter)
    answers = generate_mixed(
        server,
        tokenizer,
        todo,
        config.batch_size,
        config.max_new_tokens,
        config.prompt_style,
        max_batch_tokens=config.kv_budget(model.config),
    )
    rows = [_row(a) for a in answers]
    with atomic_file(output) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"Wrote {len(rows)} answers to {output}")
    return rows


def _row(answer: Answer) -> dict[str, Any]:
    """An answer as JSON (without logits)."""
    return {k: v for k, v in asdict(answer).items() if k != "logits"}


def main(args: list[str] | None = None) -> None:
    """The command line: :func:`serve`'s parameters and :class:`zoo.server.ServerConfig`'s fields as flags."""
    from jsonargparse import CLI

    with one_line_errors():
        CLI(serve, as_positional=False, args=args)


if __name__ == "__main__":
    main()
    exit_now()  # the server has stopped, or the answers are written
