"""The prompt template an adapter was trained with travels in the adapter and is used to serve it."""

from __future__ import annotations

import torch
from tiny_models import tiny_tokenizer

from datamodules.prompts import ALPACA_NO_INPUT
from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference import adapter_system_prompt, adapter_template, encode_prompts, prompt_info


class FakeData:
    prompt_style = "alpaca"


def test_fit_records_the_data_modules_prompt_style_and_tools_read_it():
    info = prompt_info(FakeData())
    assert info == {"prompt_style": "alpaca"}
    adapter = Adapter("merged", {}, [], BaseModelInfo("tiny", "llama", {}, "x"), {}, info)
    assert adapter_template(adapter) == "alpaca"
    assert adapter_template(None) == "plain"  # the base model
    assert adapter_template(Adapter("merged", {}, [], adapter.base, {}, {})) == "plain"  # recorded none


class ChatData:
    prompt_style = "chat"
    system_prompt = ""


def test_fit_records_the_chat_system_prompt_and_serving_renders_it():
    info = prompt_info(ChatData())
    assert info == {"prompt_style": "chat", "system_prompt": ""}
    adapter = Adapter("merged", {}, [], BaseModelInfo("tiny", "llama", {}, "x"), {}, info)
    assert adapter_system_prompt(adapter) == ""
    assert adapter_system_prompt(None) is None
    assert adapter_system_prompt(Adapter("merged", {}, [], adapter.base, {}, {"prompt_style": "chat"})) is None
    tokenizer = tiny_tokenizer()
    with_system = encode_prompts(tokenizer, ["Hi", "Hi"], "chat", "cpu", ["", None])
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert with_system["input_ids"][0].tolist() == expected
    assert with_system["attention_mask"][1].sum() < len(expected)  # the row without one is shorter


def test_each_row_is_encoded_in_its_own_template_and_left_padded():
    tokenizer = tiny_tokenizer()
    batch = encode_prompts(tokenizer, ["What is 2+2?", "Hi"], ["alpaca", "chat"], "cpu")
    alpaca = tokenizer(ALPACA_NO_INPUT.format(instruction="What is 2+2?"))["input_ids"]
    chat_text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    chat = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
    width = max(len(alpaca), len(chat))
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][0, width - len(alpaca) :].tolist() == alpaca
    assert batch["input_ids"][1, width - len(chat) :].tolist() == chat
    assert batch["attention_mask"].sum(1).tolist() == [len(alpaca), len(chat)]
    assert torch.equal(encode_prompts(tokenizer, ["x"], False, "cpu")["input_ids"], encode_prompts(tokenizer, ["x"], "plain", "cpu")["input_ids"])
