"""The Alpaca (LLM-Adapters) and chat templates."""

from __future__ import annotations

import pytest

from datamodules.prompts import AlpacaTemplate, ChatTemplate, get_template


def test_alpaca_template_is_llm_adapters_verbatim():
    template = AlpacaTemplate()
    assert template.render("Add 1 and 2.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 1 and 2.\n\n### Response:\n"
    )
    assert template.render("Translate.", "Hallo") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nHallo\n\n### Response:\n"
    )


def test_chat_template_puts_instruction_and_input_in_one_user_turn(tiny_tokenizer):
    template = get_template("chat", tiny_tokenizer)
    assert not template.add_special_tokens
    assert template.render("Translate.", "Hallo") == "<|user|>\nTranslate.\n\nHallo\n<|assistant|>\n"
    assert template.render("Hi.", "") == "<|user|>\nHi.\n<|assistant|>\n"


def test_chat_template_with_smollm2(smollm2_tokenizer):
    prompt = ChatTemplate(smollm2_tokenizer).render("What is 2 + 2?", "")
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_needs_a_chat_template(tiny_tokenizer):
    plain = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    plain.chat_template = None
    with pytest.raises(ValueError, match="prompt_style='chat' needs a tokenizer with a chat template"):
        get_template("chat", plain)
    with pytest.raises(ValueError, match="unknown prompt_style 'llama'"):
        get_template("llama", plain)


def test_a_system_prompt_is_a_system_turn_before_the_user(tiny_tokenizer):
    assert get_template("chat", tiny_tokenizer, "Be brief.").render("Hi.", "") == (
        "<|system|>\nBe brief.\n<|user|>\nHi.\n<|assistant|>\n"
    )


def test_an_empty_system_prompt_replaces_smollm2s_default(smollm2_tokenizer):
    default = ChatTemplate(smollm2_tokenizer).render("What is 2 + 2?", "")
    empty = ChatTemplate(smollm2_tokenizer, system_prompt="").render("What is 2 + 2?", "")
    assert "You are a helpful AI assistant named SmolLM" in default
    assert empty == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    count = lambda text: len(smollm2_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert count(default) - count(empty) >= 12  # the quickstart's prompts are a third shorter


def test_a_system_prompt_needs_the_chat_style(tiny_tokenizer):
    from datamodules import ArithmeticDataModule

    with pytest.raises(ValueError, match="system_prompt needs prompt_style='chat'"):
        get_template("alpaca", tiny_tokenizer, "")
    with pytest.raises(ValueError, match="system_prompt needs prompt_style='chat'"):
        ArithmeticDataModule(prompt_style="alpaca", system_prompt="Be brief.")
