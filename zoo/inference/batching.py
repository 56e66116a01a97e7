"""Continuous batching: requests join and leave one mixed-adapter batch between decoding steps.

A server cannot wait for a batch to fill, nor make a short answer wait for the longest one
in its batch. :class:`ContinuousBatcher` keeps one running batch of requests, each with its
own adapter (:class:`zoo.inference.MixedAdapterModel`: the base runs once per forward pass,
each adapter's delta modules only on its rows; or a plain model, whose requests name no
adapter), and its KV cache. Each :meth:`step`:

1. drops requests that were cancelled;
2. decodes one token for every running request (one forward pass of the whole batch);
3. lets finished requests leave: their rows are cut out of the cache;
4. admits waiting requests into the free places (within the KV cache's budget, if any);
5. prefills admitted prompts: short ones together (one forward pass, left-padded), their rows
   joined to the cache (:mod:`zoo.inference.kv_cache`), so from the next step on they decode
   with the rest. With ``prefill_chunk``, a step prefills at most that many prompt tokens
   (vLLM's chunked prefill): a longer prompt is prefilled a chunk per step in a cache of its
   own, between the decoding steps of the running requests, and joins when its last chunk is
   in; one long prompt delays every running stream by one chunk's time per step, not by
   its whole prefill.

How long a chunk may take is a matter of time, not tokens: a token's prefill costs more on a
CPU than on a GPU, and more late in a long prompt (attention over all before it) than early.
With ``prefill_share`` a step that decodes prefills only as many prompt tokens as fit in
``prefill_share`` times its decoding time, the time budget in the spirit of vLLM's per-step
token budget (``max_num_batched_tokens``), but measured: the tokens are the decoding time
(an average of the last steps) over the seconds per token of the last prefill, which the
next chunk, a little further into its prompt, will cost about as much as. So each running
stream waits at most about ``prefill_share`` decoding steps per chunk, on any machine. A
prompt's first chunk is ``MIN_PREFILL_TOKENS`` and each next one at most twice the one before
(a forward pass has a fixed cost too, so a cost per token measured on more tokens is too low
for fewer: growing from below, the chunks approach the share without passing it). The number
is never below ``MIN_PREFILL_TOKENS`` (a long prompt always moves on); a step with nothing to
decode prefills ``prefill_chunk`` tokens.

Whole prompts (those that fit in a step) may take another share, ``admit_share``: how fast
waiting requests join is what keeps the batch full. Each request needs its prompt prefilled once
per answer, so with short answers a share that suits a long prompt's chunks admits requests
more slowly than they finish, and the batch runs half empty (64 clients of 42-token prompts and
32-token answers, SmolLM2 on a CPU: 31 rows on average at a share of 1.25, 47 at 2.5 and 54 at 5,
1.35× the tokens/s of 1.25; ``docs/benchmarks.md``). The running streams pay for it with longer steps while
requests join; a long prompt's chunks keep to ``prefill_share``.

The cache holds every token of a row except its last one (the next input), so a prefilled
row and a decoded row are in the same state and decode together. Positions are counted per
row (left padding is masked out), so a row's tokens are what it would get alone (what
Hugging Face ``generate`` decodes for it alone: the tests hold it to that, logits included);
sampling is per row too (:mod:`zoo.inference.sampling`). A request ends at the tokenizer's
EOS token, one of its stop strings (:mod:`zoo.inference.text`), ``max_new_tokens``, or the
model's context.

The batcher is not thread-safe: one thread calls :meth:`submit`, :meth:`cancel` and
:meth:`step` (the server's worker loop, :func:`complete` for a list of requests, or
:func:`zoo.inference.greedy_answers`, the evaluation's greedy answers).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers.cache_utils import DynamicCache

from zoo.inference.kv_cache import check_supported, empty_cache, join, keep_rows, pad_left, trim_padding
from zoo.inference.mixed import MixedAdapterModel
from zoo.inference.prefix_cache import Layers, PrefixCache
from zoo.inference.sampling import Sampling, next_tokens
from zoo.inference.text import TextStream

MIN_PREFILL_TOKENS = 16
"""The fewest prompt tokens a step prefills under ``prefill_share`` (see the module docstring)."""
GROUP_WIDTH_RATIO = 2.0
"""Rows join a KV-cache group whose widest row is within this factor of theirs (both ways) rather
than open a group of their own (each group is one forward pass per step); see ``max_groups``."""
DECODE_AVERAGE = 0.25
"""Weight of the newest decoding step in the average ``prefill_share`` is measured against."""

FinishReason = Literal["stop", "length"]
"""``stop``: the EOS token or a stop string; ``length``: ``max_new_tokens`` or the context."""


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt, already in its template and tokenized, and how to answer it."""

    ids: list[int]
    adapter: str | None = None
    """A loaded adapter, or ``None`` for the base model."""
    max_new_tokens: int = 64
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """Give each generated token's log-probability and this many most likely alternatives
    (0: none); ``None``: no log-probabilities."""
    prompt_logprobs: bool = False
    """Also give the log-probability of each prompt token after the ones before it (and
    ``logprobs`` alternatives): what scoring a text needs (OpenAI's ``echo``)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A token, its log-probability under the model (before temperature and top-p), and the most
    likely tokens at its place with theirs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Completion:
    """A finished answer."""

    tokens: list[int]
    """Generated tokens, the EOS token included when it ended the answer."""
    text: str
    """Their text (special tokens skipped), cut before a stop string."""
    finish_reason: FinishReason
    prompt_tokens: int
    logits: torch.Tensor | None = None
    """``[len(tokens), vocab]`` when the batcher keeps them."""
    logprobs: list[TokenLogprob] | None = None
    """One per token, when the request asked for them."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """One per prompt token (the first has none: nothing comes before it), when asked for."""


@dataclass
class Update:
    """What one step did for one request."""

    uid: Hashable
    text: str
    """New text, certain from now on (may be empty while a stop string might be starting)."""
    generated: int
    """Tokens generated so far."""
    completion: Completion | None = None
    """Set when the request is finished (this is its last update)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """The log-probabilities of this step's token, when the request asked for them."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """On a request's first update, its prompt's log-probabilities, when it asked for them."""


@dataclass
class _Row:
    uid: Hashable
    request: GenerationRequest
    stream: TextStream
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prefilled: int = 0  # prompt tokens in ``cache``, while the prompt is prefilled in chunks
    cache: Any = None
    finish: FinishReason | None = None
    cancelled: bool = False


class ContinuousBatcher:
    """One running batch of requests of many adapters; requests join and leave between steps.

    Args:
        server: the base model with its adapters, or a plain model (a base, a fused model, a
            model a method rewrote for training) whose requests name no adapter.
        tokenizer: the base model's tokenizer (EOS, padding, text).
        max_batch_size: requests decoded together at most; the rest wait in arrival order.
        keep_logits: keep each answer's logits (tests compare them with a fused model's).
        max_batch_tokens: the KV cache's budget, in tokens: requests join only while, summed
            over the groups (``max_groups``), ``rows × longest (prompt + max_new_tokens)`` stays
            within it (every row of a group's cache is as wide as its longest), so the caches
            never outgrow memory (:meth:`cache_columns`); ``None``: no budget.
        prefill_chunk: prompt tokens prefilled per step at most (a longer prompt is prefilled
            in chunks over several steps); ``None``: every admitted prompt at once.
        max_groups: caches the running requests may be split into. One cache is as wide as its
            longest row, so one long request among short ones makes every row cost its width;
            with more groups a request joins the one where it adds the least memory, a long one
            (over ``GROUP_WIDTH_RATIO`` times the widest of every group) its own, and the budget
            counts each group at its own width. Each group is one forward pass per step.
        prefill_share: while requests decode, a step's prefill is held to about this many of
            its decoding steps' time (measured; see the module docstring), and to
            ``prefill_chunk`` tokens if that is set; ``None``: ``prefill_chunk`` tokens a step.
        prefix_cache_tokens: keep the keys and values of prefilled prompts' shared beginnings
            (a chat template's system prompt, a few-shot preamble), up to this many tokens, and
            prefill only the rest of a prompt that starts with one (:mod:`zoo.inference.prefix_cache`);
            ``None``: prefill every prompt whole. They are memory beside ``max_batch_tokens``.
        admit_share: as ``prefill_share``, for whole prompts (see the module docstring); ``None``:
            ``prefill_share``.

    Raises:
        UnsupportedCacheError: the model's KV cache has layers other than full-attention and
            sliding-window ones (:mod:`zoo.inference.kv_cache`).
    """

    def __init__(
        self,
        server: MixedAdapterModel | nn.Module,
        tokenizer: Any,
        max_batch_size: int = 16,
        keep_logits: bool = False,
        max_batch_tokens: int | None = None,
        prefill_chunk: int | None = None,
        max_groups: int = 1,
        prefill_share: float | None = None,
        prefix_cache_tokens: int | None = None,
        admit_share: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        if prefill_share is not None and not prefill_share > 0:
            raise ValueError(f"prefill_share must be positive, got {prefill_share}")
        if admit_share is not None and not admit_share > 0:
            raise ValueError(f"admit_share must be positive, got {admit_share}")
        self.admit_share = admit_share if admit_share is not None else prefill_share
        self.prefill_chunk = prefill_chunk
        self.prefill_share = prefill_share
        self.clock = time.perf_counter
        """Seconds, for ``prefill_share``'s measurements (a test may count work instead)."""
        self.decode_seconds: float | None = None
        """The decoding steps' time, averaged (``DECODE_AVERAGE``)."""
        self.prefill_token_seconds: float | None = None
        """Seconds per prompt token of the last prefill."""
        self._prefill_measured = 0  # tokens of the last prefill measured
        self.step_seconds = (0.0, 0.0)
        """The last step's decoding and prefill time (``clock``), apart."""
        self.server = server if isinstance(server, MixedAdapterModel) else None
        self.model = server.model if isinstance(server, MixedAdapterModel) else server
        check_supported(self.model.config)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.keep_logits = keep_logits
        self.max_batch_tokens = max_batch_tokens
        self.device = next(self.model.parameters()).device
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        parameters = inspect.signature(self.model.forward).parameters
        self._last_logit_only = "logits_to_keep" in parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5
        self.waiting: deque[_Row] = deque()
        self.prefilling: deque[_Row] = deque()  # admitted, their prompts not (all) in the cache yet
        self.max_groups = max_groups
        self.groups: list[_Group] = []
        self.prefilled_last_step = 0
        """Prompt tokens the last step prefilled (at most :meth:`prefill_budget`'s)."""
        self._uids: set[Hashable] = set()
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None

    @property
    def rows(self) -> list[_Row]:
        """The requests decoding, group by group (each group in its cache's order)."""
        return [row for group in self.groups for row in group.rows]

    def cache_columns(self) -> int:
        """Rows × columns of every KV cache held (the groups' and those of prompts being prefilled):
        the cache's memory in tokens, which ``max_batch_tokens`` bounds."""
        held = sum(group.mask.numel() for group in self.groups)
        return held + sum(row.prefilled for row in self.prefilling)

    @property
    def busy(self) -> bool:
        """Whether any request is running or waiting."""
        return bool(self.rows or self.waiting or self.prefilling)

    def submit(self, uid: Hashable, request: GenerationRequest) -> None:
        """Queue a request; it joins the batch at a coming step.

        Raises:
            ValueError: the uid is in use, the prompt is empty, ``max_new_tokens`` is not
                positive, or the prompt leaves no room in the model's context.
            KeyError: the adapter is not loaded.
        """
        if uid in self._uids:
            raise ValueError(f"request {uid!r} is already queued")
        if not request.ids:
            raise ValueError("the prompt is empty (no tokens)")
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        if self.context is not None and len(request.ids) >= self.context:
            raise ValueError(f"the prompt has {len(request.ids)} tokens; the model's context is {self.context}")
        if self.max_batch_tokens is not None and _span(request) > self.max_batch_tokens:
            raise ValueError(
                f"the prompt ({len(request.ids)} tokens) and max_new_tokens ({request.max_new_tokens}) exceed the "
                f"KV cache budget of {self.max_batch_tokens} tokens"
            )
        loaded = sorted(self.server.adapters) if self.server is not None else []
        if request.adapter is not None and request.adapter not in loaded:
            raise KeyError(f"adapter {request.adapter!r} is not loaded (loaded: {loaded or 'none'})")
        generator = request.sampling.generator(self.device)
        self.waiting.append(_Row(uid, request, TextStream(self.tokenizer, request.stop), generator))
        self._uids.add(uid)

    def cancel(self, uid: Hashable) -> bool:
        """Forget a request (its client left); it leaves the batch at the next step.

        Returns:
            Whether the request was waiting or running.
        """
        for row in self.waiting:
            if row.uid == uid:
                self.waiting.remove(row)
                self._uids.discard(uid)
                return True
        for row in [*self.prefilling, *self.rows]:
            if row.uid == uid and not row.cancelled:
                row.cancelled = True
                return True
        return False

    def step(self) -> list[Update]:
        """Decode one token for every running request and admit waiting ones (see the module docstring)."""
        updates: list[Update] = []
        with _no_grad():
            self._leave([row for row in self.rows if row.cancelled])
            for row in [row for row in self.prefilling if row.cancelled]:
                self.prefilling.remove(row)
                self._uids.discard(row.uid)
            decoded, start = bool(self.rows), self.clock()
            if decoded:
                updates += self._decode()
                self._measured_decode(self.clock() - start)
                self._leave([row for row in self.rows if row.finish is not None])
            middle = self.clock()
            self.prefilling += self._admit()
            timed = decoded and self.prefill_share is not None
            if decoded:
                updates += self._prefill_some(self.prefill_budget(), timed, self.prefill_budget(self.admit_share))
            else:
                updates += self._prefill_some(self.prefill_chunk)
            self.step_seconds = (middle - start, self.clock() - middle)
        return updates

    def prefill_budget(self, share: float | None = None) -> int | None:
        """Prompt tokens a step that decodes may prefill (``None``: no limit): ``prefill_chunk``, or
        with ``prefill_share`` (or the ``share`` given) what fits in that share of a decoding step
        (see the module docstring)."""
        share = share if share is not None else self.prefill_share
        if share is None or self.decode_seconds is None:
            return self.prefill_chunk
        if self.prefill_token_seconds is None:
            tokens = MIN_PREFILL_TOKENS
        else:
            fits = int(share * self.decode_seconds / max(self.prefill_token_seconds, 1e-12))
            tokens = max(MIN_PREFILL_TOKENS, min(fits, 2 * self._prefill_measured))
        return tokens if self.prefill_chunk is None else min(tokens, self.prefill_chunk)

    def _measured_decode(self, seconds: float) -> None:
        if self.decode_seconds is None:
            self.decode_seconds = seconds
        else:
            self.decode_seconds += DECODE_AVERAGE * (seconds - self.decode_seconds)

    def _timed_forward(self, tokens: int, **inputs: Any) -> Any:
        """The model's forward pass on a prompt's ``tokens`` (padding included), its time per token noted."""
        start = self.clock()
        out = self.model(**inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the kernels' time, not their launch's
        self.prefill_token_seconds = (self.clock() - start) / tokens
        self._prefill_measured = tokens
        return out

    def _admit(self) -> list[_Row]:
        """Waiting requests, in arrival order, while there are places and the KV budget holds."""
        joining: list[_Row] = []
        spans = [[_span(row.request) for row in group.rows] for group in self.groups]
        for row in self.prefilling:  # placed where they will join
            _place(spans, _span(row.request), self.max_groups)
        places = len(self.rows) + len(self.prefilling)
        while self.waiting and places + len(joining) < self.max_batch_size:
            trial = [list(group) for group in spans]
            _place(trial, _span(self.waiting[0].request), self.max_groups)
            if self.max_batch_tokens is not None and _memory(trial) > self.max_batch_tokens:
                break  # the first in line waits for rows to leave (none is passed over)
            joining.append(self.waiting.popleft())
            spans = trial
        return joining

    def _prefill_some(self, budget: int | None, timed: bool = False, whole_budget: int | None = None) -> list[Update]:
        """Prefill admitted prompts, in order: whole short prompts together, up to ``whole_budget``
        tokens (default ``budget``), or the next chunk of a long one, up to ``budget`` (``timed``: its
        first is ``MIN_PREFILL_TOKENS``); ``None``: all."""
        whole_budget = whole_budget if whole_budget is not None else budget
        if budget is None:  # everything at once
            whole = list(self.prefilling)
            self.prefilling.clear()
            self.prefilled_last_step = max(map(self._to_prefill, whole), default=0) * len(whole)
            return self._prefill(whole) if whole else []
        whole: list[_Row] = []
        widest = 0  # tokens the widest row of ``whole`` has to prefill
        while self.prefilling:
            row = self.prefilling[0]
            width = max(widest, self._to_prefill(row))
            if row.prefilled == 0 and width * (len(whole) + 1) <= whole_budget:
                whole.append(self.prefilling.popleft())
                widest = width
                continue
            if whole:
                break  # the long prompt's chunk comes next step
            if timed and row.prefilled == 0:
                budget = min(budget, MIN_PREFILL_TOKENS)
            self.prefilled_last_step = min(budget, self._to_prefill(row))
            return self._prefill_chunk(row, self.prefilled_last_step)
        self.prefilled_last_step = widest * len(whole)
        return self._prefill(whole) if whole else []

    def _to_prefill(self, row: _Row) -> int:
        """Prompt tokens of the row that a forward pass must still run: those in no cache, its own
        (a chunked prompt's) or a kept prefix (what the prefill budget and its timing count)."""
        if row.prefilled:
            return len(row.request.ids) - row.prefilled
        if row.request.prompt_logprobs:  # scored from its first token
            return len(row.request.ids)
        return len(row.request.ids) - self._kept_prefix(row)[0]

    # ------------------------------------------------------------------ forward passes

    def _decode(self) -> list[Update]:
        """Feed every row its last token (one position each), a forward pass per group."""
        updates = []
        for group in self.groups:
            ids = torch.tensor([[row.generated[-1]] for row in group.rows], device=self.device)  # [B, 1]
            positions = group.mask.sum(dim=1, keepdim=True)  # [B, 1]: real tokens before it
            mask = F.pad(group.mask, (0, 1), value=1)
            with self._assigned(group.rows):
                cache = {self._cache_arg: group.cache}
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
            group.cache, group.mask = getattr(out, self._cache_arg), mask
            updates += self._advance(group.rows, out.logits[:, -1])
        return updates

    def _join(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Add prefilled rows (their cache and mask) to the group where they add the least memory."""
        spans = [[_span(row.request) for row in group.rows] for group in self.groups]
        widest = max(_span(row.request) for row in rows)
        best = _place(spans, widest, self.max_groups, len(rows))
        if best == len(self.groups):
            self.groups.append(_Group(list(rows), cache, mask))
            return
        group = self.groups[best]
        group.cache, group.mask = join(group.cache, group.mask, cache, mask)
        group.rows += rows

    def _prefill_chunk(self, row: _Row, count: int) -> list[Update]:
        """The next ``count`` tokens of a long prompt, on its own cache; its last chunk joins the batch."""
        ids = row.request.ids
        if row.prefilled == 0 and not row.request.prompt_logprobs:
            reused, entry = self._kept_prefix(row)
            if entry is not None:
                row.cache, row.prefilled = DynamicCache(entry.sliced(reused)), reused
                count = min(count, len(ids) - reused)
                self.prefix_cache.record(reused)
        start, end = row.prefilled, row.prefilled + count
        chunk = torch.tensor([ids[start:end]], device=self.device)
        mask = torch.ones(1, end, dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        extra = {"logits_to_keep": 1} if self._last_logit_only and not row.request.prompt_logprobs else {}
        extra[self._cache_arg] = row.cache if row.cache is not None else empty_cache()
        with self._assigned([row]):
            out = self._timed_forward(
                count, input_ids=chunk, attention_mask=mask, position_ids=positions, use_cache=True, **extra
            )
        row.cache, row.prefilled = getattr(out, self._cache_arg), end
        if row.request.prompt_logprobs:  # each position predicts the next prompt token
            targets = ids[start + 1 : end + 1]
            row.prompt_logprobs = (row.prompt_logprobs or [None]) + _logprobs(
                out.logits[0, : len(targets)], targets, row.request.logprobs or 0
            )
        if end < len(ids):
            return []
        self._keep_prefix(row, [(layer.keys, layer.values) for layer in row.cache.layers])
        self.prefilling.popleft()
        updates = self._advance([row], out.logits[:, -1])
        cache, row.cache = row.cache, None
        if row.finish is None:
            self._join([row], cache, mask)
        return updates

    def _prefill(self, rows: list[_Row]) -> list[Update]:
        """Run the new rows' prompts (left-padded, as ``generate`` does) and join them to the batch.

        A row whose prompt starts with a kept prefix starts from its keys and values: the input is
        as wide as the most any row has left to prefill, and a row with less left takes fewer
        tokens from its prefix (its tokens stay contiguous at the right, as the cache needs)."""
        scoring = any(row.request.prompt_logprobs for row in rows)  # then every position's logits
        lengths = [len(row.request.ids) for row in rows]
        kept = [self._kept_prefix(row) for row in rows] if not scoring else [(0, None)] * len(rows)
        width = max(n - reused for n, (reused, _) in zip(lengths, kept))  # the input's columns
        starts = [max(n - width, 0) for n in lengths]  # prompt tokens each row takes from its prefix
        ids = torch.tensor(
            [[self.pad] * (width - n + s) + row.request.ids[s:] for row, n, s in zip(rows, lengths, starts)],
            device=self.device,
        )
        columns = max(starts) + width
        mask = torch.tensor([[0] * (columns - n) + [1] * n for n in lengths], device=self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)[:, columns - width :]
        extra = {"logits_to_keep": 1} if self._last_logit_only and not scoring else {}
        extra[self._cache_arg] = self._prefix_cache(kept, starts) if max(starts) else empty_cache()
        for s in starts if self.prefix_cache is not None else ():
            self.prefix_cache.record(s)
        with self._assigned(rows):
            out = self._timed_forward(
                ids.numel(), input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
            )
        cache = getattr(out, self._cache_arg)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            self._keep_prefix(row, [(layer.keys[i : i + 1, :, -n:], layer.values[i : i + 1, :, -n:])
                                    for layer in cache.layers])  # fmt: skip
            if row.request.prompt_logprobs:
                logits = out.logits[i, width - n : -1]  # each prompt token's predecessor
                row.prompt_logprobs = [None, *_logprobs(logits, row.request.ids[1:], row.request.logprobs or 0)]
        updates = self._advance(rows, out.logits[:, -1])
        alive = [i for i, row in enumerate(rows) if row.finish is None]
        if not alive:
            return updates
        if len(alive) < len(rows):
            mask = trim_padding(cache, keep_rows(cache, mask, torch.tensor(alive, device=self.device)))
        self._join([rows[i] for i in alive], cache, mask)
        return updates

    def _prefix_key(self, row: _Row) -> tuple[str | None, int]:
        """What the prefix cache keys a row's entries on: its adapter, as loaded now."""
        name = row.request.adapter
        return (name, self.server.versions[name]) if name is not None and self.server is not None else (name, 0)

    def _kept_prefix(self, row: _Row) -> tuple[int, Any]:
        """The kept prefix of the row's prompt: ``(tokens it gives, entry)``, ``(0, None)`` if none."""
        if self.prefix_cache is None:
            return 0, None
        return self.prefix_cache.longest(self._prefix_key(row), row.request.ids)

    def _keep_prefix(self, row: _Row, layers: Layers) -> None:
        """Offer a prefilled prompt (its keys and values, one row, every token) to the prefix cache."""
        if self.prefix_cache is not None:
            self.prefix_cache.add(self._prefix_key(row), row.request.ids, layers)

    def _prefix_cache(self, kept: list[tuple[int, Any]], starts: list[int]) -> DynamicCache:
        """A prefill's starting cache: each row's first ``starts[i]`` tokens from its kept prefix,
        left-padded to the most any row takes."""
        columns = max(starts)
        like = next(entry for (_, entry), s in zip(kept, starts) if s).layers
        layers = []
        for layer, (keys, values) in enumerate(like):
            rows_k, rows_v = [], []
            for (_, entry), s in zip(kept, starts):
                k, v = entry.layers[layer] if s else (keys, values)
                rows_k.append(pad_left(k[:, :, :s], columns))
                rows_v.append(pad_left(v[:, :, :s], columns))
            layers.append((torch.cat(rows_k), torch.cat(rows_v)))
        return DynamicCache(layers)

    def _assigned(self, rows: list[_Row]) -> contextlib.AbstractContextManager:
        """Each row's adapter for the forward pass (a plain model has none to assign)."""
        if self.server is None:
            return contextlib.nullcontext()
        return self.server.assign([row.request.adapter for row in rows])

    # ------------------------------------------------------------------ bookkeeping

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> list[Update]:
        """Pick each row's next token; say what it adds and whether the row is finished."""
        tokens = next_tokens(logits, [r.request.sampling for r in rows], [r.generator for r in rows]).tolist()
        updates = []
        for row, token, scores in zip(rows, tokens, logits):
            row.generated.append(token)
            if self.keep_logits:
                row.logits.append(scores.float().cpu())
            new = _logprobs(scores[None], [token], row.request.logprobs) if row.request.logprobs is not None else []
            row.logprobs += new
            if token in self.eos:
                row.finish, text = "stop", row.stream.flush()
            else:
                text = row.stream.push(token)
                if row.stream.stopped:
                    row.finish = "stop"
                elif len(row.generated) >= row.request.max_new_tokens or self._context_full(row):
                    row.finish, text = "length", text + row.stream.flush()
            prompt = row.prompt_logprobs if len(row.generated) == 1 else None
            updates.append(Update(row.uid, text, len(row.generated), self._completion(row), new, prompt))
        return updates

    def _context_full(self, row: _Row) -> bool:
        return self.context is not None and len(row.request.ids) + len(row.generated) >= self.context

    def _completion(self, row: _Row) -> Completion | None:
        if row.finish is None:
            return None
        self._uids.discard(row.uid)
        logits = torch.stack(row.logits) if self.keep_logits else None
        logprobs = row.logprobs if row.request.logprobs is not None else None
        return Completion(
            row.generated, row.stream.text, row.finish, len(row.request.ids), logits, logprobs, row.prompt_logprobs
        )

    def _leave(self, leaving: list[_Row]) -> None:
        """Cut the rows of finished or cancelled requests out of the batch and its cache."""
        if not leaving:
            return
        for row in leaving:
            self._uids.discard(row.uid)
        gone = {id(row) for row in leaving}
        for group in list(self.groups):
            kept = [i for i, row in enumerate(group.rows) if id(row) not in gone]
            if len(kept) == len(group.rows):
                continue
            if not kept:
                self.groups.remove(group)
                continue
            group.rows = [group.rows[i] for i in kept]
            mask = keep_rows(group.cache, group.mask, torch.tensor(kept, device=self.device))
            group.mask = trim_padding(group.cache, mask)


def _no_grad() -> contextlib.AbstractContextManager:
    """Inference mode, unless the caller has turned gradients off already: Lightning evaluates
    under ``no_grad`` where it judges inference mode unsafe (gloo's collectives, which FSDP's
    forward passes run), and the batcher keeps that choice."""
    return torch.inference_mode() if torch.is_grad_enabled() else contextlib.nullcontext()


def _logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each token's log-probability under its row of ``logits`` ``[n, vocab]``, and the ``top`` likeliest."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
    if top > 0:
        values, ids = logprobs.topk(top, dim=-1)
        alternatives = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        alternatives = [()] * len(tokens)
    return [TokenLogprob(t, lp, alt) for t, lp, alt in zip(tokens, chosen, alternatives)]


@dataclass
class _Group:
    """Rows that decode together in one forward pass, with their KV cache and its mask ``[rows, columns]``."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor


def _memory(spans: list[list[int]]) -> int:
    """Cache columns groups of these spans can come to: each row as wide as its group's widest."""
    return sum(len(group) * max(group) for group in spans if group)


def _place(spans: list[list[int]], span: int, max_groups: int, count: int = 1) -> int:
    """Put ``count`` rows of ``span`` where they add the least memory; return the group's index.
    ``spans`` is changed in place.

    A new group (if there is room for one) is opened only for rows more than ``GROUP_WIDTH_RATIO``
    times as wide as every group's widest row, or less than its inverse: a group is a forward pass
    per step, which costs far more than the padding of rows of similar width."""
    costs = [(len(g) + count) * max(*g, span) - len(g) * max(g) for g in spans]
    alike = [max(g) / GROUP_WIDTH_RATIO <= span <= max(g) * GROUP_WIDTH_RATIO for g in spans]
    if len(spans) < max_groups and not any(alike):
        costs.append(count * span)
        spans.append([])
    best = min(range(len(costs)), key=lambda i: (costs[i], i))
    if not spans[-1] and best != len(spans) - 1:
        spans.pop()  # the new group was not needed
    spans[best] += [span] * count
    return best


def _span(request: GenerationRequest) -> int:
    """The most cache columns a request can need: its prompt and its longest answer."""
    return len(request.ids) + request.max_new_tokens


def complete(batcher: ContinuousBatcher, requests: Iterable[GenerationRequest]) -> list[Completion]:
    """Answer a list of requests through ``batcher`` (the JSONL mode of ``tools/serve.py``), in order."""
    requests = list(requests)
    for i, request in enumerate(requests):
        batcher.submit(i, request)
    done: dict[Hashable, Completion] = {}
    while len(done) < len(requests):
        for update in batcher.step():
            if update.completion is not None:
                done[update.uid] = update.completion
    return [done[i] for i in range(len(requests))]
