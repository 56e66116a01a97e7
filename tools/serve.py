"""Batched greedy generation where every request names its adapter, many adapters per batch.

Nothing is fused: the base model runs once per batch and each adapter's small delta
modules run on its own requests (:mod:`zoo.inference.mixed`). From Python::

    server = MixedAdapterModel(model, BaseModelInfo.of(model, "smollm2-135m"))
    server.add_adapter("math", load_adapter("runs/math/adapter"))
    answers = generate_mixed(server, tokenizer, [Request("2+2=", "math"), Request("Hi", None)])

From the command line, a JSONL file of requests ``{"prompt": ..., "adapter": "name" or
null, "max_new_tokens": ...}`` in, a JSONL file of answers out (same order)::

    python tools/serve.py --adapters '[math=runs/math/adapter, code=runs/code/adapter]' \\
        --requests requests.jsonl --output answers.jsonl --batch_size 16

or a minimal HTTP endpoint on localhost (``--port 8000``; POST a request object, or a list
of them, to ``/generate``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Literal

import torch

from zoo.inference import (
    MixedAdapterModel,
    Template,
    encode_prompts,
    generate_greedy,
    load_base,
    parse_named,
    pick_device,
    read_adapter,
)
from zoo.loading import load_tokenizer
from zoo.outputs import atomic_file


PromptStyle = Literal["adapter", "plain", "chat", "alpaca"]
"""How requests become prompts: each in its adapter's training template, or all in one."""


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
) -> list[Answer]:
    """Answer requests in batches of ``batch_size``, in order, each with its own adapter.

    Args:
        server: the base model with the adapters loaded.
        tokenizer: the base model's tokenizer.
        requests: the requests.
        batch_size: requests per batch (mixed adapters).
        max_new_tokens: default length of an answer.
        template: the prompt template of every request (``True``: ``chat``, ``False``:
            ``plain``), or ``adapter``: each request in the template its adapter was
            trained with (recorded in the adapter; ``plain`` for the base model).
        logits: also return each answer's logits.

    Raises:
        KeyError: a request names an adapter that is not loaded.
    """
    unknown = sorted({r.adapter for r in requests if r.adapter is not None and r.adapter not in server.adapters})
    if unknown:
        raise KeyError(f"requests name adapters that are not loaded: {unknown} (loaded: {sorted(server.adapters)})")
    device = next(server.model.parameters()).device
    answers = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        lengths = [r.max_new_tokens or max_new_tokens for r in chunk]
        templates = [_template(server, r.adapter, template) for r in chunk]
        systems = [server.system_prompts[r.adapter] if template == "adapter" and r.adapter else None for r in chunk]
        batch = encode_prompts(tokenizer, [r.prompt for r in chunk], templates, device, systems)
        with server.assign([r.adapter for r in chunk]):
            tokens, scores = generate_greedy(server.model, tokenizer, batch, max(lengths), logits)
        for i, (request, length) in enumerate(zip(chunk, lengths)):
            row = _until_eos(tokens[i, :length].tolist(), tokenizer.eos_token_id)
            answers.append(
                Answer(
                    prompt=request.prompt,
                    adapter=request.adapter,
                    text=tokenizer.decode(row, skip_special_tokens=True),
                    tokens=row,
                    logits=scores[i, : len(row)].cpu() if scores is not None else None,
                )
            )
    return answers


def _template(server: MixedAdapterModel, adapter: str | None, template: PromptStyle | bool) -> Template:
    if isinstance(template, bool):
        return "chat" if template else "plain"
    if template == "adapter":
        return server.templates[adapter] if adapter is not None else "plain"
    return template


def _until_eos(tokens: list[int], eos: int | list[int] | None) -> list[int]:
    stops = set(eos if isinstance(eos, list) else [eos])
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


def read_requests(path: str | Path, known: set[str]) -> list[Request]:
    """Read a JSONL file of requests.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not a JSON object with a string ``prompt``, a string or null
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
    base_model: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    chat: bool = False,
    prompt_style: PromptStyle = "adapter",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "auto",
    port: int | None = None,
) -> list[dict[str, Any]]:
    """Answer a JSONL file of requests (or serve HTTP on localhost), many adapters per batch.

    Args:
        adapters: adapter folders as ``name=path`` (or ``path``: named by its folder).
        requests: JSONL file: one ``{"prompt", "adapter", "max_new_tokens"}`` object a line.
        output: JSONL file of answers ``{"prompt", "adapter", "text", "tokens"}``, in
            request order; written only when every request is answered.
        base_model: the base model; default: the one the adapters record.
        batch_size: requests per batch.
        max_new_tokens: answer length for requests that give none.
        chat: wrap every prompt in the tokenizer's chat template (``--prompt_style chat``).
        prompt_style: ``adapter``: each request in the template its adapter was trained
            with (``plain`` for base-model requests and adapters that record none);
            ``plain``, ``chat`` or ``alpaca``: every request in that template.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ...
        port: serve ``POST /generate`` on ``127.0.0.1:port`` instead of reading a file.

    Returns:
        The answers written (empty when serving HTTP).
    """
    if port is None and (requests is None or output is None):
        raise ValueError("give --requests and --output, or --port to serve HTTP")
    paths = parse_named(adapters or [])
    loaded = {name: read_adapter(path) for name, path in paths.items()}
    todo = read_requests(requests, set(loaded)) if port is None else []
    model, info = load_base(base_model, loaded, dtype)
    model.to(pick_device(device))
    tokenizer = load_tokenizer(info.name_or_path)
    server = MixedAdapterModel(model, info)
    for name, adapter in loaded.items():
        server.add_adapter(name, adapter)
    template = "chat" if chat else prompt_style
    if port is not None:
        serve_http(server, tokenizer, port, batch_size, max_new_tokens, template)
        return []
    answers = generate_mixed(server, tokenizer, todo, batch_size, max_new_tokens, template)
    rows = [_row(a) for a in answers]
    with atomic_file(output) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"Wrote {len(rows)} answers to {output}")
    return rows


def serve_http(
    server: MixedAdapterModel, tokenizer: Any, port: int, batch_size: int, max_new_tokens: int, template: Any
) -> None:
    """Serve ``POST /generate`` on ``127.0.0.1:port`` until interrupted (see :func:`http_server`)."""
    httpd = http_server(server, tokenizer, port, batch_size, max_new_tokens, template)
    print(f"Serving {sorted(server.adapters)} on http://127.0.0.1:{httpd.server_port}/generate")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def http_server(
    server: MixedAdapterModel, tokenizer: Any, port: int, batch_size: int, max_new_tokens: int, template: Any
) -> HTTPServer:
    """A minimal single-threaded HTTP endpoint on ``127.0.0.1:port`` (0: any free port).

    ``POST /generate`` with a request object or a list of them; the reply is the list of
    answers as JSON (status 400 with ``{"error": ...}`` for a bad request). One request is
    handled at a time, so the model is never used by two threads.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/generate":
                return self._reply(404, {"error": "POST to /generate"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                raws = body if isinstance(body, list) else [body]
                todo = [_request(raw, f"request {i}", set(server.adapters)) for i, raw in enumerate(raws)]
            except ValueError as err:  # JSONDecodeError is a ValueError
                return self._reply(400, {"error": str(err)})
            answers = generate_mixed(server, tokenizer, todo, batch_size, max_new_tokens, template)
            self._reply(200, [_row(a) for a in answers])

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            pass  # quiet: the caller prints what it needs

    return HTTPServer(("127.0.0.1", port), Handler)


def _row(answer: Answer) -> dict[str, Any]:
    """An answer as JSON (without logits)."""
    return {k: v for k, v in asdict(answer).items() if k != "logits"}


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(serve, as_positional=False)
