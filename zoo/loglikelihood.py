"""Log-likelihood scoring: how probable a model finds each choice of a multiple-choice item.

A request is a ``(context, continuation)`` pair; its score is the sum of the continuation
tokens' log-probabilities after the context, and whether every continuation token is the
model's greedy choice. Text is tokenised as lm-evaluation-harness 0.4 tokenises it for a
causal Hugging Face model (:func:`encode_pair`), so ftzoo's and lm-eval's numbers agree item by
item. Per item, ``acc`` picks the choice of highest log-likelihood and ``acc_norm`` the highest
log-likelihood per character of the choice's text (lm-eval's definitions).

The context of an item is computed once for all its choices::

    contexts, left-padded      [pad pad c0 c1 c2 c3]  -> KV cache, log p(x0 | c)
    cache rows picked per choice  (one row per request, ``batch_select_indices``)
    continuations, right-padded            [x0 x1 x2 pad]  -> log p(x1 | c x0), log p(x2 | c x0 x1)
    (in groups of similar length, each on its own copy of the cache: :func:`_by_length`)

Tokens that every continuation of a context begins with go with the context (forwarded once, their
log-probabilities added to each continuation's): the adapter form's choices, "the correct answer
is answer1" to "answer5", then need no forward pass of their own.

Position ids are counted from each row's first real token, and padding is masked, so a row's
score does not depend on its batch mates (up to float rounding).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from datamodules.choices import ChoiceItem, PromptForm
from datamodules.prompts import PromptTemplate
from zoo.loss import keeps_selected_logits

Pair = tuple[list[int], list[int]]
"""``(context token ids, continuation token ids)``."""
DEFAULT_MAX_LENGTH = 2048
"""lm-eval's fallback context window when the model's config names none."""


@dataclass(frozen=True)
class LogLikelihood:
    """The score of one continuation: the sum of its tokens' log-probabilities, and whether
    greedy decoding would have produced exactly it."""

    logprob: float
    greedy: bool


def encode_pair(tokenizer: Any, context: str, continuation: str) -> Pair:
    """Token ids of a request, as lm-evaluation-harness 0.4's Hugging Face causal model makes them.

    Trailing whitespace of the context moves to the continuation; the whole string is encoded
    and the tokens of the context (encoded alone) are split off its front, so a word boundary
    is tokenised as in running text. Special tokens are added as ``tokenizer.encode`` adds them,
    except to text that already starts with the BOS token. An empty context becomes the BOS
    token (EOS when there is none), or the continuation's first token when it is that token.
    """
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if context == "":
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    bos_text = tokenizer.decode(prefix)

    def encode(text: str) -> list[int]:
        if bos_text and text.startswith(bos_text):
            return tokenizer.encode(text, add_special_tokens=False)
        return tokenizer.encode(text)

    whole, context_ids = encode(context + continuation), encode(context)
    return context_ids, whole[len(context_ids) :]


def context_window(model: nn.Module) -> int:
    """The longest input the model takes (its config's), as lm-eval reads it."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def _batches(pairs: Sequence[Pair], batch_size: int) -> list[list[int]]:
    """Request indices in batches of at most ``batch_size`` rows, longest contexts first; the
    requests of one context stay together (one item's choices share their context's forward)
    unless they alone are more than a batch."""
    order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0]), pairs[i][0], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and pairs[groups[-1][0]][0] == pairs[i][0]:
            groups[-1].append(i)
        else:
            groups.append([i])
    batches: list[list[int]] = []
    for group in groups:
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            if batches and len(batches[-1]) + len(chunk) <= batch_size:
                batches[-1].extend(chunk)
            else:
                batches.append(chunk)
    return batches


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    pairs: Sequence[Pair],
    batch_size: int = 64,
    max_length: int | None = None,
    description: str | None = None,
) -> list[LogLikelihood]:
    """The log-likelihood of each continuation after its context, in the requests' order.

    Args:
        model: a causal LM (Hugging Face interface: ``past_key_values``, ``position_ids``).
        pairs: ``(context ids, continuation ids)``; the context must not be empty.
        batch_size: most continuations scored together (their distinct contexts are one batch).
        max_length: the model's window; a longer request loses tokens from the left of its
            context, as lm-eval truncates (default: the model config's).
        description: shown on a progress bar (none when ``None``).

    Raises:
        ValueError: an empty context or continuation, or a continuation longer than the window.
    """
    window = max_length or context_window(model)
    requests: list[Pair] = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"request {i}: the context and the continuation must each have a token")
        if len(continuation) > window:
            raise ValueError(f"request {i}: continuation of {len(continuation)} tokens exceeds the window {window}")
        kept = (list(context) + list(continuation))[-(window + 1) :]
        requests.append((kept[: len(kept) - len(continuation)], list(continuation)))
    results: list[LogLikelihood | None] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(_batches(requests, batch_size), desc=description, unit="batch", disable=description is None, leave=False):
            for i, score in zip(batch, _score_batch(model, [requests[i] for i in batch])):
                results[i] = score
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _score_batch(model: nn.Module, requests: list[Pair]) -> list[LogLikelihood]:
    """One batch: its distinct contexts forwarded once, each continuation on its context's cache.

    The tokens every continuation of a context begins with (the adapter form's "the correct
    answer is answer" before each choice's label) are forwarded once, with the context, and their
    log-probabilities added to each of those continuations: only what differs is forwarded per
    request, which in the adapter form is nothing (the label is predicted by the context's last logits).
    """
    device = next(model.parameters()).device
    contexts = list(dict.fromkeys(tuple(c) for c, _ in requests))
    row_of = {c: k for k, c in enumerate(contexts)}
    owner = [row_of[tuple(c)] for c, _ in requests]  # each request's context row
    shared = [_shared_start([x for k, (_, x) in zip(owner, requests) if k == row]) for row in range(len(contexts))]
    rows = torch.tensor(owner, device=device)
    extended = [list(context) + part for context, part in zip(contexts, shared)]
    width, kept = max(len(c) for c in extended), max(len(part) for part in shared) + 1
    ids = torch.zeros(len(contexts), width, dtype=torch.long)
    mask = torch.zeros(len(contexts), width, dtype=torch.long)
    for k, c in enumerate(extended):  # left padding: every context ends at the same position
        ids[k, width - len(c) :] = torch.tensor(c)
        mask[k, width - len(c) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    last = {"logits_to_keep": kept} if keeps_selected_logits(model) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, **last)
    tail = torch.log_softmax(out.logits[:, -kept:].float(), dim=-1)  # (contexts, kept, vocab)
    shared_logprob, shared_greedy = [], []
    for k, part in enumerate(shared):  # the shared tokens (none: 0 and True), predicted by the positions before the last
        scores, target = tail[k, kept - 1 - len(part) : kept - 1], torch.tensor(part, dtype=torch.long, device=device)
        shared_logprob.append(scores.gather(1, target[:, None]).sum())
        shared_greedy.append(bool((scores.argmax(-1) == target).all()))
    first = tail[:, -1][rows]  # (requests, vocab): predicts each request's first unshared token

    targets = [torch.tensor(x[len(shared[k]) :], device=device) for k, (_, x) in zip(owner, requests)]
    logprobs = [shared_logprob[k] + first[r, t[0]] for r, (k, t) in enumerate(zip(owner, targets))]
    greedy = [shared_greedy[k] and bool(first[r].argmax() == t[0]) for r, (k, t) in enumerate(zip(owner, targets))]
    cache = getattr(out, _cache_arg(model))
    lengths = mask.sum(-1)
    chunks = _by_length([len(t) - 1 for t in targets])
    for chunk in chunks:  # each chunk extends its own copy of the contexts' cache; the last, the cache itself
        chunk_cache = cache if chunk is chunks[-1] else copy.deepcopy(cache)
        picked = rows[chunk]
        chunk_cache.batch_select_indices(picked)  # one cache row per request
        rest = len(targets[chunk[0]]) - 1
        inputs = torch.zeros(len(chunk), rest, dtype=torch.long, device=device)
        real = torch.zeros(len(chunk), rest, dtype=torch.bool, device=device)
        for k, r in enumerate(chunk):  # right padding: feeds tokens 0..n-2 to predict 1..n-1
            inputs[k, : len(targets[r]) - 1] = targets[r][:-1]
            real[k, : len(targets[r]) - 1] = True
        positions = lengths[picked][:, None] + torch.arange(rest, device=device)
        full_mask = torch.cat([mask[picked], real.long()], dim=1)
        logits = _logits(model, inputs, full_mask, positions, chunk_cache, real)  # (real positions, vocab), row-major
        scores = torch.log_softmax(logits.float(), dim=-1)
        offset = 0
        for r in chunk:
            t = targets[r]
            part = scores[offset : offset + len(t) - 1]
            logprobs[r] = logprobs[r] + part.gather(1, t[1:, None]).sum()
            greedy[r] = greedy[r] and bool((part.argmax(-1) == t[1:]).all())
            offset += len(t) - 1
    return [LogLikelihood(float(lp), bool(g)) for lp, g in zip(logprobs, greedy)]


def _shared_start(continuations: list[list[int]]) -> list[int]:
    """The tokens all ``continuations`` begin with, leaving each at least its last token (which its
    own context position predicts)."""
    n = min(len(x) for x in continuations) - 1
    first = continuations[0]
    for x in continuations[1:]:
        n = next((i for i in range(n) if x[i] != first[i]), n)
    return list(first[:n])


FORWARD_COST = 64
"""What one more forward pass costs, in padded tokens: each pass reads every weight once,
which on a CPU costs about as much as computing 50-100 tokens of SmolLM2-135M."""


def _by_length(lengths: list[int], overhead: int = FORWARD_COST) -> list[list[int]]:
    """Indices of the non-zero ``lengths`` in chunks, longest first, that cost the fewest padded
    tokens plus ``overhead`` per chunk (an exact partition of the sorted lengths): the
    continuations of a batch differ in length (ARC's choices: 1 to 30 tokens), and padding all
    to the longest would triple the work, while many small passes would each reread the weights."""
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    best = [0] + [0] * len(order)  # best[j]: cost of the first j, chunked
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        # the last chunk is order[i:j], padded to its longest, order[i]
        best[j], cut[j] = min((best[i] + overhead + lengths[order[i]] * (j - i), i) for i in range(j))
    chunks, j = [], len(order)
    while j:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]


def _cache_arg(model: nn.Module) -> str:
    """The name of the KV-cache argument and output (``past_key_values`` became ``cache`` in transformers 5)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _logits(
    model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, keep: torch.Tensor
) -> torch.Tensor:
    """Logits of the ``keep`` positions only, ``(kept, vocab)``: the LM head of the padding is skipped
    where the model takes a boolean ``logits_to_keep``."""
    kwargs = dict(input_ids=inputs, attention_mask=mask, position_ids=positions, use_cache=True, **{_cache_arg(model): cache})
    if keeps_selected_logits(model):
        return model(**kwargs, logits_to_keep=keep).logits
    return model(**kwargs).logits[keep]


# ----- multiple-choice items ------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemScore:
    """One item scored: each choice's log-likelihood, and the choices ``acc`` and ``acc_norm`` pick.

    Attributes:
        logprobs: per choice, the sum of its tokens' log-probabilities.
        greedy: per choice, whether it is the greedy continuation.
        lengths: per choice, the characters ``acc_norm`` divides by.
        gold: the index of the right choice.
    """

    logprobs: tuple[float, ...]
    greedy: tuple[bool, ...]
    lengths: tuple[int, ...]
    gold: int

    @property
    def prediction(self) -> int:
        """The choice of highest log-likelihood (the first on a tie, as ``numpy.argmax``)."""
        return max(range(len(self.logprobs)), key=lambda k: (self.logprobs[k], -k))

    @property
    def prediction_norm(self) -> int:
        """The choice of highest log-likelihood per character of its text."""
        values = [lp / n for lp, n in zip(self.logprobs, self.lengths)]
        return max(range(len(values)), key=lambda k: (values[k], -k))

    @property
    def acc(self) -> bool:
        return self.prediction == self.gold

    @property
    def acc_norm(self) -> bool:
        return self.prediction_norm == self.gold


def choice_lengths(item: ChoiceItem, form: PromptForm) -> list[int]:
    """What ``acc_norm`` divides by: the length in characters of each choice's text (lm-eval's
    ``len(choice)``), or, in the adapter form, of the continuation scored for it."""
    if form == "adapter":
        return [len(item.answer_template.format(label=label)) for label in item.labels]
    return [len(choice) for choice in item.choices]


def encode_items(
    items: Sequence[ChoiceItem], form: PromptForm, tokenizer: Any, template: PromptTemplate | None = None
) -> list[list[Pair]]:
    """Each item's requests as token ids.

    ``cloze`` text is encoded as lm-eval encodes it (:func:`encode_pair`). The ``adapter`` form
    is encoded as the adapter was trained (``datamodules.encode``): the record's instruction and
    input rendered by ``template`` and encoded alone (with the template's special tokens), the
    answer sentence encoded alone after it.

    Raises:
        ValueError: the adapter form without a template.
    """
    if form == "cloze":
        return [[encode_pair(tokenizer, c, x) for c, x in item.requests(form)] for item in items]
    if form != "adapter":
        raise ValueError(f"unknown prompt form {form!r}; choose 'cloze' or 'adapter'")
    if template is None:
        raise ValueError("the adapter form needs the data module's prompt template")
    encoded = []
    for item in items:
        prompt = tokenizer.encode(template.render(*item.template_fields()), add_special_tokens=template.add_special_tokens)
        encoded.append([(prompt, tokenizer.encode(x, add_special_tokens=False)) for _, x in item.requests(form)])
    return encoded


def score_items(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[ChoiceItem],
    form: PromptForm = "cloze",
    template: PromptTemplate | None = None,
    batch_size: int = 64,
    description: str | None = None,
) -> list[ItemScore]:
    """Every item's choices scored by log-likelihood, all items batched together.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        items: the multiple-choice items.
        form: ``cloze`` (lm-eval's question/answer text) or ``adapter`` (the training format).
        template: the prompt template of the adapter form.
        batch_size: most choices scored together.
        description: shown on a progress bar.
    """
    encoded = encode_items(items, form, tokenizer, template)
    flat = [pair for pairs in encoded for pair in pairs]
    scores = iter(loglikelihoods(model, flat, batch_size, description=description))
    results = []
    for item, pairs in zip(items, encoded):
        mine = [next(scores) for _ in pairs]
        results.append(
            ItemScore(
                tuple(s.logprob for s in mine), tuple(s.greedy for s in mine), tuple(choice_lengths(item, form)), item.gold
            )
        )
    return results
