"""The prompt template an adapter was trained with travels in the adapter and is used to serve it."""

from __future__ import annotations

import torch
from tiny_models import tiny_tokenizer

from datamodules.prompts import ALPACA_NO_INPUT
from zoo.adapter import Adapter, BaseModelInfo
from zoo.inference import adapter_template, encode_prompts, prompt_info


class FakeData:
    prompt_style = "alpaca"


def test_fit_records_the_data_modules_prompt_style_and_tools_read_it():
    info = prompt_info(FakeData())
    assert info == {"prompt_style": "alpaca"}
    adapter = Adapter("merged", {}, [], BaseModelInfo("tiny", "llama", {}, "x"), {}, info)
    assert adapter_template(adapter) == "alpaca"
    assert adapter_template(None) == "plain"  # the base model
    assert adapter_template(Adapter("merged", {}, [], adapter.base, {}, {})) == "plain"  # recorded none


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
