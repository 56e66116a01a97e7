"""The OpenAI wire format: request bodies (validated by pydantic), answers, stream chunks, errors.

FastAPI validates a body against :class:`ChatRequest` or :class:`CompletionRequest`; a
field of the wrong type or out of range becomes a 400 naming the field
(:func:`validation_error`). Options this server cannot honour (``n`` > 1, ``logprobs``,
``tools``, penalties, ...) are refused by name rather than ignored, so a client never gets
an answer made differently from what it asked. Unknown fields are ignored, as OpenAI
clients send some (``user``, ``metadata``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "logprobs": lambda v: v not in (None, False),
    "top_logprobs": lambda v: v not in (None, 0),
    "echo": lambda v: v not in (None, False),
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

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    """``POST /v1/completions``: one prompt (a list holding one prompt is accepted too)."""

    prompt: str | list[str]

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise _refuse("prompt", f"send one prompt per request (got a list of {len(self.prompt)})")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ----------------------------------------------------------------------------- answers


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(uid: str, model: str, text: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": usage(prompt, completion),
    }


def text_completion(uid: str, model: str, text: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt, completion),
    }


def chat_chunk(uid: str, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uid}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text_chunk(uid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(chunk: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
    """The last chunk of a stream asked for with ``stream_options.include_usage``: no choices, the usage."""
    return {**chunk, "choices": [], "usage": usage(prompt, completion)}


def model_list(names: list[str], base_name: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "ftzoo",
                "parent": None if name == base_name else base_name,
            }
            for name in names
        ],
    }
