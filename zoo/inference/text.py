"""Tokens to text as they are generated: incremental decoding and stop strings.

A streamed answer must never show text that a stop string later takes back, nor half of
a multi-byte character. :class:`TextStream` decodes the tokens so far, holds back the
last ``len(longest stop) - 1`` characters and a trailing incomplete character, and cuts
the text where a stop string first appears. The pieces it hands out always join to the
final text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INCOMPLETE = "\ufffd"
"""What a tokenizer decodes a partial UTF-8 sequence to."""


class TextStream:
    """The text of one answer, given out piece by piece.

    Args:
        tokenizer: decodes the tokens (special tokens skipped).
        stop: strings that end the answer; the answer's text stops before the first.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.shown = 0  # characters of self.text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that is now certain (may be empty).

        After a stop string appears, :attr:`stopped` is set and the text ends before it.
        """
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.stop:
            cut = _first_stop(text, self.stop, start=max(0, self.shown - self.hold))
            if cut is not None:
                self.text, self.stopped = text[:cut], True
                return self.flush()
        self.text = text
        safe = min(len(text) - self.hold, len(text.rstrip(INCOMPLETE)))
        if safe <= self.shown:
            return ""
        piece, self.shown = text[self.shown : safe], safe
        return piece

    def flush(self) -> str:
        """The text not handed out yet (the answer is over)."""
        piece, self.shown = self.text[self.shown :], len(self.text)
        return piece


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None
