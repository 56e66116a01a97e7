"""A request's prompt in its template, tokenized and checked against the limits, before it is queued.

This runs in the front end, so a request that cannot be answered is refused with its 4xx
at once and never takes a place in the batch: an unknown ``model`` (404), an empty prompt,
``max_tokens`` above the server's cap, or a prompt that with ``max_tokens`` does not fit the
model's context (400).

Templates follow the adapter (``--prompt_style adapter``): each adapter records the one it
was trained with (:func:`zoo.inference.adapter_template`).

============  ==============================  ==========================================
template      ``/v1/completions`` prompt      ``/v1/chat/completions`` messages
============  ==============================  ==========================================
``chat``      one user turn, chat template    the conversation in the chat template
``alpaca``    the instruction of the          one user turn (a system message goes
              LLM-Adapters template           before it) as the instruction
``plain``     as it is                        one user turn (system before it), as it is
============  ==============================  ==========================================

A completion prompt given as token ids is taken as it is, in no template (as lm-eval's
``local-completions`` sends it). The base model (and an adapter that records no template) answers completions in ``plain``
and chat requests in the chat template, when the tokenizer has one. An adapter trained with a
system prompt (:func:`zoo.inference.adapter_system_prompt`) gets it in its chat template, unless
the request brings its own system message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.adapter import AdapterError
from zoo.inference import Template
from zoo.inference.generate import render
from zoo.loading import load_config, load_tokenizer
from zoo.server.adapters import AdapterEntry, AdapterRegistry
from zoo.server.config import ServerConfig
from zoo.server.protocol import ApiError, ChatRequest, CompletionRequest


@dataclass(frozen=True)
class Job:
    """A checked request, as the decoding loop takes it."""

    ids: list[int]
    adapter: AdapterEntry | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    logprobs: int | None = None
    """Log-probabilities of each token and this many alternatives; ``None``: none."""
    echo: bool = False
    """The prompt comes back before the answer (with its log-probabilities, if asked)."""


class Prompts:
    """Templates, tokenizer and limits of one server.

    Args:
        config: the server's options.
        tokenizer: the base model's tokenizer.
        adapters: the adapters served (their templates and system prompts).
        context: the model's context length (prompt and answer together).
        kv_budget: the KV cache's budget in tokens (``kv_cache_gb``); ``None``: none.
    """

    def __init__(
        self,
        config: ServerConfig,
        tokenizer: Any,
        adapters: AdapterRegistry,
        context: int,
        kv_budget: int | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.context = context
        self.kv_budget = kv_budget
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    @classmethod
    def load(cls, config: ServerConfig, adapters: AdapterRegistry, base: str) -> Prompts:
        """The base model's tokenizer and context (not its weights), with ``adapters``.

        Raises:
            ValueError: the tokenizer has no chat template but ``prompt_style`` is ``chat``.
        """
        tokenizer = load_tokenizer(base)
        if config.prompt_style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"--prompt_style chat needs a tokenizer with a chat template; {base}'s has none")
        model_config = load_config(base)
        context = int(model_config.max_position_embeddings)
        return cls(config, tokenizer, adapters, context, config.kv_budget(model_config))

    def adapter(self, model: str) -> AdapterEntry | None:
        """The adapter a request's ``model`` names (``None``: the base).

        Raises:
            ApiError: 404, no such model here; 400, ``adapter_folder`` holds one that cannot be served.
        """
        if model == self.config.base_name:
            return None
        try:
            entry = self.adapters.resolve(model)
        except AdapterError as err:
            raise ApiError(400, str(err), param="model", code="adapter_error") from err
        if entry is None:
            names = [self.config.base_name, *self.adapters.names]
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server has {', '.join(map(repr, names))}",
                param="model",
                code="model_not_found",
            )
        return entry

    def completion(self, request: CompletionRequest) -> Job:
        """A ``/v1/completions`` request of one prompt as a job (see the module docstring for its template)."""
        return self.completions(request)[0]

    def completions(self, request: CompletionRequest) -> list[Job]:
        """A ``/v1/completions`` request as one job per prompt (see the module docstring for its template)."""
        adapter = self.adapter(request.model)
        jobs = []
        for number, prompt in enumerate(request.prompts):
            param = "prompt" if len(request.prompts) == 1 else f"prompt.{number}"
            if not prompt:
                raise ApiError(400, f"{param} is empty", param=param, code="empty_prompt")
            if isinstance(prompt, list):
                vocab = len(self.tokenizer)
                if any(not 0 <= token < vocab for token in prompt):
                    bad = next(token for token in prompt if not 0 <= token < vocab)
                    raise ApiError(
                        400, f"{param}: token id {bad} is not in the vocabulary (0 to {vocab - 1})", param=param
                    )
                ids = list(prompt)
            else:
                template = self._template(adapter, chat=False)
                text, special = render(self.tokenizer, prompt, template, self._system(adapter, template))
                ids = self._ids(text, special, param)
            jobs.append(self._job(request, adapter, ids, param))
        return jobs

    def chat(self, request: ChatRequest) -> Job:
        """A ``/v1/chat/completions`` request as a job (see the module docstring for its template)."""
        adapter = self.adapter(request.model)
        if not any(message.text for message in request.messages):
            raise ApiError(400, "messages: every message is empty", param="messages", code="empty_prompt")
        template = self._template(adapter, chat=True)
        if template == "chat":
            messages = [{"role": m.role, "content": m.text} for m in request.messages]
            system = self._system(adapter, template)
            if system is not None and not any(m.role in ("system", "developer") for m in request.messages):
                messages.insert(0, {"role": "system", "content": system})  # as the adapter was trained
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            special = False
        else:
            text, special = render(self.tokenizer, self._one_turn(request, adapter, template), template)
        return self._job(request, adapter, self._ids(text, special, "messages"), "messages")

    def _template(self, adapter: AdapterEntry | None, chat: bool) -> Template:
        if self.config.prompt_style != "adapter":
            return self.config.prompt_style
        recorded = adapter.template if adapter is not None else "plain"
        if recorded == "plain" and chat and self.has_chat_template:
            return "chat"
        return recorded

    def _system(self, adapter: AdapterEntry | None, template: Template) -> str | None:
        """The adapter's recorded system prompt, when requests follow the adapter's own template."""
        if self.config.prompt_style != "adapter" or adapter is None or template != "chat":
            return None
        return adapter.system

    def _one_turn(self, request: ChatRequest, adapter: AdapterEntry | None, template: Template) -> str:
        """The one user turn a single-turn template takes (a system message goes before it)."""
        users = [m for m in request.messages if m.role == "user"]
        if len(users) != 1 or any(m.role == "assistant" for m in request.messages):
            raise ApiError(
                400,
                f"messages: {request.model!r} answers in the single-turn {template!r} template; send one user message "
                f"(and optionally a system message), not {len(request.messages)} messages with "
                f"{len(users)} from the user",
                param="messages",
            )
        system = [m.text for m in request.messages if m.role in ("system", "developer") and m.text]
        return "\n\n".join([*system, users[0].text])

    def _ids(self, text: str, special: bool, param: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        if not ids:
            raise ApiError(400, f"{param}: the prompt is empty (no tokens)", param=param, code="empty_prompt")
        return ids

    def _job(
        self, request: ChatRequest | CompletionRequest, adapter: AdapterEntry | None, ids: list[int], param: str
    ) -> Job:
        asked, cap, room = request.requested_tokens, self.config.max_tokens_limit, self.context - len(ids)
        if asked is not None and asked > cap:
            raise ApiError(
                400,
                f"max_tokens is {asked}; this server allows at most {cap} (its --max_tokens_limit)",
                param="max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens",
                code="max_tokens_too_large",
            )
        if room < 1 or (asked is not None and asked > room):
            wanted = f" and max_tokens asks for {asked} more" if asked is not None else ""
            raise ApiError(
                400,
                f"this model's context is {self.context} tokens; the prompt has {len(ids)} tokens{wanted} "
                f"(the prompt and max_tokens must fit in {self.context})",
                param=param,
                code="context_length_exceeded",
            )
        tokens = asked if asked is not None else min(self.config.max_new_tokens, room)
        if self.kv_budget is not None and len(ids) + tokens > self.kv_budget:
            raise ApiError(
                400,
                f"the prompt ({len(ids)} tokens) and max_tokens ({tokens}) need more KV cache than this server "
                f"holds for one request ({self.kv_budget} tokens, its --kv_cache_gb {self.config.kv_cache_gb:g})",
                param=param,
                code="context_length_exceeded",
            )
        return Job(
            ids=ids,
            adapter=adapter,
            max_tokens=tokens,
            temperature=request.temperature if request.temperature is not None else self.config.temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=request.seed,
            stop=request.stop_strings,
            stream=request.stream,
            logprobs=request.logprob_count,
            echo=bool(getattr(request, "echo", False)),
        )
