"""Prompt templates: how a record's instruction and input become the text the model is conditioned on.

The response (the record's ``output``) is never part of the template: it is appended as tokens, so the
prompt tokens seen in training are exactly the ones given to ``generate`` at evaluation time.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Protocol

PromptStyle = Literal["alpaca", "chat"]

# The LLM-Adapters (Alpaca) template, byte for byte, so results are comparable with the paper tables.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class PromptTemplate(Protocol):
    """Turns an instruction and an optional input into prompt text.

    Attributes:
        add_special_tokens: Whether the tokenizer should add its special tokens (e.g. BOS) when encoding
            the rendered prompt. False when the template already contains them.
    """

    add_special_tokens: bool

    def render(self, instruction: str, input: str) -> str:
        """Returns the prompt text; ``input`` is ``""`` when the record has none."""
        ...


class AlpacaTemplate:
    """The LLM-Adapters template (plain text, works with any tokenizer)."""

    add_special_tokens = True

    def render(self, instruction: str, input: str) -> str:
        if input:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA_NO_INPUT.format(instruction=instruction)


class ChatTemplate:
    """The tokenizer's own chat template: one user turn, then the assistant's generation prompt.

    The user message is the instruction, followed by a blank line and the input when there is one. The
    record's output is the assistant turn; the EOS token closes it.

    Args:
        tokenizer: A tokenizer with a ``chat_template``.
        system_prompt: A system turn before the user turn. ``None`` leaves the conversation to the
            template, which may add its own default (SmolLM2's adds a 16-token one); ``""`` is an empty
            system turn, which replaces that default with ~3 tokens.

    Raises:
        ValueError: If the tokenizer has no chat template.
    """

    add_special_tokens = False  # the chat template writes its own special tokens

    def __init__(self, tokenizer: Any, system_prompt: Optional[str] = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"prompt_style='chat' needs a tokenizer with a chat template; {type(tokenizer).__name__} has none "
                "(use prompt_style='alpaca')"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    def render(self, instruction: str, input: str) -> str:
        content = f"{instruction}\n\n{input}" if input else instruction
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def get_template(style: str, tokenizer: Any, system_prompt: Optional[str] = None) -> PromptTemplate:
    """Returns the template for ``style`` ("alpaca" or "chat"), with ``system_prompt`` for "chat".

    Raises:
        ValueError: For an unknown style, "chat" with a tokenizer that has no chat template, or a
            system prompt with "alpaca" (which has no system turn).
    """
    if style == "alpaca":
        if system_prompt is not None:
            raise ValueError("system_prompt needs prompt_style='chat'; the alpaca template has no system turn")
        return AlpacaTemplate()
    if style == "chat":
        return ChatTemplate(tokenizer, system_prompt)
    raise ValueError(f"unknown prompt_style {style!r}; choose 'alpaca' or 'chat'")
