"""The OpenAI wire format: request bodies (validated by pydantic), answers, stream chunks, errors.

FastAPI validates a body against :class:`ChatRequest` or :class:`CompletionRequest`; a
field of the wrong type or out of range becomes a 400 naming the field
(:func:`validation_error`). Options this server cannot honour (``n`` > 1, ``tools``,
penalties, ...) are refused by name rather than ignored, so a client never gets
an answer made differently from what it asked. Unknown fields are ignored, as OpenAI
clients send some (``user``, ``metadata``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from zoo.inference import TokenLogprob

MAX_TOP_LOGPROBS = 20
"""The most alternatives a request may ask for per token (OpenAI's chat limit; vLLM's default)."""

UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "suffix": lambda v: v not in (None, ""),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "logit_bias": lambda v: bool(v),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "response_format": lambda v: v not in (None, {"type": "text"}),
}
"""Fields that would change the answer, and when a value asks for what this server does not do."""


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or error_type(status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first pydantic/FastAPI validation error as a 400 that names the field."""
    error = errors[0]
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    loc = [part for part in error.get("loc", ()) if _field_part(part)]
    if kind == "json_invalid":
        where = error.get("loc", ("body", 0))[-1]
        reason = ctx.get("error", "malformed")
        return ApiError(400, f"the request body is not valid JSON: {reason} (at character {where})")
    param = ctx.get("param") or ".".join(str(part) for part in loc) or None
    if param is None and kind != "value_error":
        return ApiError(400, "the request body must be a JSON object (with 'model' and 'messages' or 'prompt')")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if ctx.get("param") is None and param is not None:
        message = f"{param}: {message}"
        if kind != "missing" and "input" in error:
            message += f" (got {_short(error['input'])})"
    return ApiError(400, message, param=param, code="missing" if kind == "missing" else "invalid_value")


def _field_part(part: Any) -> bool:
    """Whether a pydantic location part names a field or an index (not 'body' or a union member's type)."""
    if isinstance(part, int):
        return True
    return part != "body" and part.isidentifier() and part not in ("str", "int", "float", "bool")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(param: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", "{param}: " + message, {"param": param})


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Request(BaseModel):
    """What chat and completion requests share."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="an adapter's name, or the base model's (see /v1/models)")
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Request:
        for name, unsupported in UNSUPPORTED.items():
            value = getattr(self, name, None) if name in type(self).model_fields else (self.model_extra or {}).get(name)
            if unsupported(value):
                raise _refuse(name, f"{_short(value)} is not supported by this server")
        stops = self.stop_strings
        if len(stops) > 4 or any(not s for s in stops):
            raise _refuse("stop", f"give at most 4 non-empty strings (got {_short(self.stop)})")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise _refuse("top_logprobs", "needs logprobs: true")
        return self

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for (``None``: they are not)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    """``POST /v1/completions``: a prompt (text or token ids), or a list of them (one choice each)."""

    prompt: str | list[StrictInt] | list[str] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    @model_validator(mode="after")
    def _prompts(self) -> CompletionRequest:
        several = isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list))
        if several and self.stream and len(self.prompt) > 1:
            raise _refuse("prompt", f"a streamed request takes one prompt (got a list of {len(self.prompt)})")
        if isinstance(self.prompt, list) and not self.prompt:
            raise _refuse("prompt", "the list of prompts is empty")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts: text, or token ids taken as they are."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs


# ----------------------------------------------------------------------------- answers


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    uid: str,
    model: str,
    text: str,
    finish: str,
    prompt: int,
    completion: int,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": f"chatcmpl-{uid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage(prompt, completion),
    }


def text_completion(
    uid: str, model: str, choices: list[tuple[str, str, dict[str, Any] | None]], prompt: int, completion: int
) -> dict[str, Any]:
    """An answer of ``(text, finish_reason, logprobs)`` per prompt, with the usage of all of them."""
    return {
        "id": f"cmpl-{uid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}
            for i, (text, finish, logprobs) in enumerate(choices)
        ],
        "usage": usage(prompt, completion),
    }


def chat_chunk(
    uid: str, model: str, delta: dict[str, str], finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uid}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def text_chunk(
    uid: str, model: str, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
    }


def chat_logprobs(tokenizer: Any, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat's ``logprobs``: ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries
        ]
    }


def completion_logprobs(
    tokenizer: Any, entries: Sequence[TokenLogprob | None], tokens: Sequence[int], offset: int = 0
) -> dict[str, Any]:
    """Completions' ``logprobs``: ``tokens``, ``token_logprobs``, ``top_logprobs`` (the chosen token
    among them, as OpenAI gives it) and ``text_offset`` (from ``offset``: a stream's chunk goes on
    from the tokens before it, so its chunks together give the answer's offsets); an entry ``None``
    (the first token of an echoed prompt: nothing comes before it) has no log-probability."""
    texts = [tokenizer.decode([token]) for token in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    top = []
    for entry in entries:
        if entry is None:
            top.append(None)
            continue
        alternatives = {tokenizer.decode([t]): lp for t, lp in entry.top}
        alternatives.setdefault(tokenizer.decode([entry.token]), entry.logprob)
        top.append(alternatives)
    return {
        "tokens": texts,
        "token_logprobs": [None if e is None else e.logprob for e in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def usage_chunk(chunk: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
    """The last chunk of a stream asked for with ``stream_options.include_usage``: no choices, the usage."""
    return {**chunk, "choices": [], "usage": usage(prompt, completion)}


def model_list(names: list[str], base_name: str, created: int, root: str, max_model_len: int) -> dict[str, Any]:
    """``/v1/models``: the base and each adapter, with the base model they run on (``root``) and
    the context length (``max_model_len``, prompt and answer together), as vLLM lists them."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "ftzoo",
                "root": root,
                "parent": None if name == base_name else base_name,
                "max_model_len": max_model_len,
            }
            for name in names
        ],
    }
