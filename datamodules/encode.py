"""Records -> token ids, with the length limit applied and reported.

Prompt and response are tokenized separately and concatenated, so the prompt tokens used in training are
exactly those given to ``generate`` (no merge across the boundary), and masking is a length, not a search.
EOS is appended to the response so the model learns to stop.

Length limit (``max_length`` tokens for prompt + response + EOS):

* too long: the *response* is cut (its EOS is lost); counted as ``truncated``;
* the prompt alone fills ``max_length`` (no room for one response token): the record is *dropped*;
  counted as ``dropped``. Prompts are never cut: a cut prompt is a different question.

Each split logs one summary line with both counts, at WARNING level when either is non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from datamodules.prompts import PromptTemplate
from datamodules.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One tokenized record.

    Attributes:
        prompt_ids: Prompt tokens (including any BOS the tokenizer adds).
        response_ids: Response tokens followed by EOS (unless truncated); empty for prediction.
        prompt: The prompt text.
        answer: Reference answer for evaluation (may be empty for prediction).
        task: Task name.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    prompt: str
    answer: str
    task: str

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class EncodeStats:
    """What encoding did to one split (see the module docstring for the rules)."""

    split: str
    records: int
    truncated: int
    dropped: int
    mean_tokens: float
    max_tokens: int

    @property
    def kept(self) -> int:
        return self.records - self.dropped


def encode_records(
    records: Sequence[Record],
    answers: Sequence[str],
    tokenizer: Any,
    template: PromptTemplate,
    max_length: int,
    split: str,
    with_response: bool = True,
) -> tuple[list[Example], EncodeStats]:
    """Tokenizes records, applies the length limit, and logs the split summary.

    Args:
        records: The records.
        answers: Reference answer for each record.
        tokenizer: A Hugging Face tokenizer with an EOS token.
        template: Renders the prompt text.
        max_length: Most tokens per example.
        split: Split name for the summary, e.g. ``"train"``.
        with_response: False for prediction: only the prompt is encoded.

    Returns:
        The kept examples (in record order) and the statistics.
    """
    prompts = [template.render(r.instruction, r.input) for r in records]
    prompt_ids = _batch_encode(tokenizer, prompts, template.add_special_tokens)
    if with_response:
        eos = [tokenizer.eos_token_id]
        response_ids = [ids + eos for ids in _batch_encode(tokenizer, [r.output for r in records], False)]
    else:
        response_ids = [[] for _ in records]

    examples, truncated, dropped = [], 0, 0
    for record, answer, prompt, p_ids, r_ids in zip(records, answers, prompts, prompt_ids, response_ids):
        if len(p_ids) >= max_length:
            dropped += 1
            continue
        if len(p_ids) + len(r_ids) > max_length:
            truncated += 1
            r_ids = r_ids[: max_length - len(p_ids)]
        examples.append(Example(p_ids, r_ids, prompt, answer, record.task))

    lengths = [len(e) for e in examples]
    stats = EncodeStats(
        split=split,
        records=len(records),
        truncated=truncated,
        dropped=dropped,
        mean_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
        max_tokens=max(lengths, default=0),
    )
    log_stats(stats, max_length)
    return examples, stats


def _batch_encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)
    return [list(ids) for ids in encoded["input_ids"]]


@rank_zero_only
def log_stats(stats: EncodeStats, max_length: int) -> None:
    """Logs the one-line summary of a split (on global rank 0 only)."""
    level = logging.WARNING if stats.truncated or stats.dropped else logging.INFO
    log.log(
        level,
        "%s: %d records kept of %d; %d truncated (response cut to fit max_length=%d), "
        "%d dropped (prompt alone fills max_length); tokens per record: mean %.1f, max %d",
        stats.split,
        stats.kept,
        stats.records,
        stats.truncated,
        max_length,
        stats.dropped,
        stats.mean_tokens,
        stats.max_tokens,
    )
