"""Tokenizing records: EOS, the length limit, and the per-split summary."""

from __future__ import annotations

import logging

from datamodules.encode import encode_records
from datamodules.prompts import AlpacaTemplate, ChatTemplate
from datamodules.records import Record


def _record(instruction: str, output: str) -> Record:
    return Record(instruction, "", output, None, "t")


def test_prompt_and_response_are_separate_and_response_ends_with_eos(tiny_tokenizer):
    records = [_record("Add 1 and 2.", "3")]
    (example,), stats = encode_records(records, ["3"], tiny_tokenizer, AlpacaTemplate(), 512, "train")
    assert tiny_tokenizer.decode(example.prompt_ids) == AlpacaTemplate().render("Add 1 and 2.", "")
    assert example.response_ids == tiny_tokenizer("3").input_ids + [tiny_tokenizer.eos_token_id]
    assert (example.answer, example.task, stats.truncated, stats.dropped) == ("3", "t", 0, 0)


def test_chat_prompt_with_smollm2(smollm2_tokenizer):
    template = ChatTemplate(smollm2_tokenizer)
    (example,), _ = encode_records([_record("Hi", "Hello!")], [""], smollm2_tokenizer, template, 512, "train")
    assert smollm2_tokenizer.decode(example.prompt_ids).endswith("<|im_start|>assistant\n")
    assert smollm2_tokenizer.decode(example.response_ids) == "Hello!<|im_end|>"


def test_truncation_and_dropping_are_counted_and_logged_once(tiny_tokenizer, caplog):
    template = AlpacaTemplate()
    prompt_len = len(tiny_tokenizer(template.render("q", "")).input_ids)
    records = [
        _record("q", "ok"),  # fits: prompt + 2 + EOS
        _record("q", "x" * 50),  # response cut
        _record("q" * 30, "y"),  # prompt alone too long: dropped
    ]
    max_length = prompt_len + 10
    with caplog.at_level(logging.INFO, logger="datamodules"):
        examples, stats = encode_records(records, ["", "", ""], tiny_tokenizer, template, max_length, "train")
    assert (stats.records, stats.kept, stats.truncated, stats.dropped) == (3, 2, 1, 1)
    assert [len(e) for e in examples] == [prompt_len + 3, max_length]
    assert examples[1].response_ids == tiny_tokenizer("x" * 10).input_ids  # cut, EOS lost
    assert stats.max_tokens == max_length
    assert stats.mean_tokens == (2 * prompt_len + 13) / 2
    (message,) = [r for r in caplog.records if r.name == "datamodules.encode"]
    assert message.levelno == logging.WARNING
    assert message.getMessage().startswith(
        f"train: 2 records kept of 3; 1 truncated (response cut to fit max_length={max_length}), 1 dropped"
    )


def test_prompt_that_exactly_fills_max_length_is_dropped(tiny_tokenizer, caplog):
    template = AlpacaTemplate()
    prompt_len = len(tiny_tokenizer(template.render("q", "")).input_ids)
    with caplog.at_level(logging.INFO, logger="datamodules"):
        _, stats = encode_records([_record("q", "a")], [""], tiny_tokenizer, template, prompt_len, "val")
        _, ok = encode_records([_record("q", "a")], [""], tiny_tokenizer, template, prompt_len + 1, "val")
    assert (stats.dropped, ok.dropped, ok.truncated) == (1, 0, 1)
    assert caplog.records[-1].levelno == logging.WARNING


def test_clean_split_logs_at_info(tiny_tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="datamodules"):
        encode_records([_record("q", "a")], [""], tiny_tokenizer, AlpacaTemplate(), 512, "test")
    (message,) = caplog.records
    assert message.levelno == logging.INFO
    assert "test: 1 records kept of 1; 0 truncated" in message.getMessage()


def test_prediction_encodes_prompts_only(tiny_tokenizer):
    (example,), _ = encode_records([_record("q", "")], [""], tiny_tokenizer, AlpacaTemplate(), 512, "p", False)
    assert example.response_ids == []
