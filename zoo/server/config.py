"""What a server is started with: its models, its batching and its limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from zoo.inference.kv_cache import bytes_per_token
from zoo.loading import DTYPES

PromptStyle = Literal["adapter", "plain", "chat", "alpaca"]
"""How requests become prompts: each in its adapter's training template, or all in one."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs: its front end (HTTP, prompts, limits) and its decoding loop.

    ``python -m zoo.server`` (and ``python -m tools.serve --port``) takes each field as a flag of
    the same name (``--batch_size``), with the default and help written here; the JSONL mode of
    ``tools.serve`` uses the model and batching fields.

    Attributes:
        adapters: adapter name → folder, served from the start (more can be loaded while the
            server runs: ``POST /v1/load_lora_adapter``, or ``adapter_folder``).
        adapter_folder: a folder of adapter folders: a request whose ``model`` names no loaded
            adapter is answered by ``<adapter_folder>/<model>`` if that is an adapter of the
            base, loaded on first use; ``None``: no such lookup.
        max_adapters: adapters held in memory at most; past it the least recently used one
            that no request is using is dropped from memory (it is read again from its
            folder when asked for); ``None``: no limit.
        base_model: the base model; ``None``: the one the adapters record.
        base_name: the ``model`` name that asks for the base model without an adapter.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: requests decoded together at most; the rest wait for a place.
        batch_window: seconds an idle server waits after a request for others to batch with it.
        kv_cache_gb: memory the batch's KV cache may take: requests wait for a place while
            the running ones could outgrow it, and one that alone would is refused (400).
        kv_groups: caches the running requests may be split into (each one forward pass per
            step): a request joins the one where it adds the least memory, so one long request
            decodes in a cache of its own instead of making every row as wide as itself, and
            ``kv_cache_gb`` counts each group at its own width. A request opens a group only when
            it is more than twice as wide as every group's widest row, or less than half.
        prefix_cache: the share of ``kv_cache_gb`` that keeps the keys and values of prompts'
            shared beginnings (the chat template's system prompt, a few-shot preamble), so that
            a prompt starting with one prefills only the rest (:mod:`zoo.inference.prefix_cache`);
            the batch's cache gets the remainder. 0: prefill every prompt whole.
        prefill_chunk: prompt tokens prefilled per decoding step at most: a longer prompt is
            prefilled in chunks between the steps of the running requests, so it delays them
            by a chunk's time per step instead of stalling them for its whole prefill.
        prefill_share: while requests decode, a step prefills only what takes about this many
            of its decoding steps' time (measured as the server runs: the chunks are smaller on
            a slow CPU and late in a long prompt, larger on a GPU; see
            :mod:`zoo.inference.batching`), and at most ``prefill_chunk`` tokens. 1.25 keeps each
            chunk within 2 decoding steps' time with a margin for the estimate's error (1.5
            went past 2 on 1-2% of the steps: docs/benchmarks.md).
        admit_share: as ``prefill_share``, for prompts prefilled whole: how fast waiting requests
            join the batch. On the 64-client load test's work (``tools.bench.batcher_load``, 1
            thread) 1.25 kept the batch 31 rows full on average, 2.5 47 and 5 54 (1.35x the
            tokens/s of 1.25: docs/benchmarks.md); the running streams' steps are up to that many
            decoding steps longer while requests join (vLLM's token budget per step leans the same way).
        max_new_tokens: answer length of a request that gives no ``max_tokens``.
        max_tokens_limit: the most ``max_tokens`` a request may ask for.
        temperature: temperature of a request that gives none (OpenAI's default is 1).
        prompt_style: ``adapter``: each request in its adapter's training template (the
            base model: the chat template for chat requests, plain text for completions);
            ``plain``, ``chat`` or ``alpaca``: every request in that template.
        request_timeout: seconds a request may take, waiting included (then 504).
        body_timeout: seconds a client has to send its request body (then 408).
        max_body_bytes: the largest request body (then 413).
        shutdown_timeout: seconds requests in flight get to finish when the server is stopped
            (SIGINT, SIGTERM); those still decoding a second before the end (at the
            latest half-way) are answered with a 503 ``server_shutdown`` error (a stream: an
            error event and ``[DONE]``), then the connections are closed.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>`` (``tools.serve``:
            default, the ``FTZOO_API_KEY`` environment variable).
        threads: torch threads of the decoding loop; ``None``: half the cores this process may
            use, at least 1 (:func:`default_threads`).
        header_timeout: seconds a client has, from connecting, to send its request's headers
            (then its connection is closed).
    """

    adapters: dict[str, str] = field(default_factory=dict)
    adapter_folder: str | None = None
    max_adapters: int | None = None
    base_model: str | None = None
    base_name: str = "base"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    batch_size: int = 32
    batch_window: float = 0.01
    kv_cache_gb: float = 4.0
    kv_groups: int = 2
    prefix_cache: float = 0.1
    prefill_chunk: int = 256
    prefill_share: float = 1.25
    admit_share: float = 5.0
    max_new_tokens: int = 64
    max_tokens_limit: int = 1024
    temperature: float = 1.0
    prompt_style: PromptStyle = "adapter"
    request_timeout: float = 300.0
    body_timeout: float = 10.0
    max_body_bytes: int = 1_048_576
    shutdown_timeout: float = 2.0
    api_key: str | None = None
    threads: int | None = None
    header_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.base_name in self.adapters:
            raise ValueError(f"an adapter is named {self.base_name!r}, the base model's name; rename it or --base_name")
        if min(self.batch_size, self.max_new_tokens, self.max_tokens_limit, self.prefill_chunk, self.kv_groups) < 1:
            raise ValueError(
                "batch_size, max_new_tokens, max_tokens_limit, prefill_chunk and kv_groups must be at least 1"
            )
        if self.max_new_tokens > self.max_tokens_limit:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} is above max_tokens_limit {self.max_tokens_limit}")
        if self.max_adapters is not None and self.max_adapters < 1:
            raise ValueError(f"max_adapters must be at least 1, got {self.max_adapters}")
        if self.kv_cache_gb <= 0:
            raise ValueError("kv_cache_gb must be positive")
        if not 0 <= self.prefix_cache < 1:
            raise ValueError(f"prefix_cache must be at least 0 and below 1 (a share of kv_cache_gb), got {self.prefix_cache}")
        if not self.prefill_share > 0:
            raise ValueError(f"prefill_share must be positive, got {self.prefill_share}")
        if not self.admit_share > 0:
            raise ValueError(f"admit_share must be positive, got {self.admit_share}")
        for name in ("batch_window", "request_timeout", "body_timeout", "shutdown_timeout", "header_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def kv_budget(self, model_config: Any) -> int:
        """The batch's part of ``kv_cache_gb`` (all but the prefix cache's), in tokens of the model's KV cache."""
        return self._kv_tokens(model_config) - self.prefix_cache_tokens(model_config)

    def prefix_cache_tokens(self, model_config: Any) -> int:
        """The prefix cache's part of ``kv_cache_gb``, in tokens (0: no prefix cache)."""
        return int(self.prefix_cache * self._kv_tokens(model_config))

    def _kv_tokens(self, model_config: Any) -> int:
        per_token = bytes_per_token(model_config, DTYPES[self.dtype])
        return int(self.kv_cache_gb * 2**30) // per_token

    @property
    def models(self) -> list[str]:
        """The names a request's ``model`` may give: the base, then the adapters."""
        return [self.base_name, *self.adapters]


def default_threads() -> int:
    """Half the cores this process may use, at least 1: the decoding loop's torch threads unless set.

    Measured (SmolLM2-135M, a 32-row decode step, float32, on a 2-core host shared with other
    jobs, load average 6.5-8): 1 thread 90-105 tokens/s, 2 threads (torch's default there)
    8-10 tokens/s. A thread per core oversubscribes a machine whose cores something else also
    uses (the server's own HTTP front end, tokenizing in its threads, at the least): torch's
    threads then wait for each other at every operation.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    return max(1, cores // 2)
