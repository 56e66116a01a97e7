"""Batch tensors: right padding and -100 labels for training, left-padded prompts for generation."""

from __future__ import annotations

import pytest
import torch

from datamodules.collate import IGNORE_INDEX, Collator, pad
from datamodules.encode import Example

EOS, PAD = 9, 0


def _examples() -> list[Example]:
    return [
        Example([1, 2, 3], [4, EOS], "p1", "a1", "t1"),
        Example([5], [6, 7, 8, EOS], "p2", "a2", "t2"),
    ]


def test_pad_right_and_left():
    ids, mask = pad([[1, 2], [3]], 0)
    assert ids.tolist() == [[1, 2], [3, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = pad([[1, 2], [3]], 0, left=True)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_train_batch_masks_prompt_and_padding():
    batch = Collator(PAD, "train")(_examples())
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, EOS], [5, 6, 7, 8, EOS]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, EOS], [-100, 6, 7, 8, EOS]]
    short = Collator(PAD, "train")([Example([1], [EOS], "", "", ""), Example([1, 2], [3, EOS], "", "", "")])
    assert short["input_ids"].tolist() == [[1, EOS, PAD, PAD], [1, 2, 3, EOS]]
    assert short["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert short["labels"].tolist() == [[IGNORE_INDEX, EOS, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 3, EOS]]


def test_eos_is_supervised_even_when_it_is_the_pad_token():
    batch = Collator(EOS, "train")([Example([1], [EOS], "", "", ""), Example([1, 2], [3, EOS], "", "", "")])
    assert batch["input_ids"].tolist() == [[1, EOS, EOS, EOS], [1, 2, 3, EOS]]
    assert batch["labels"].tolist() == [[-100, EOS, -100, -100], [-100, -100, 3, EOS]]


def test_eval_batch_adds_left_padded_prompts_answers_and_tasks():
    batch = Collator(PAD, "eval")(_examples())
    assert set(batch) == {
        "input_ids", "attention_mask", "labels", "prompt_input_ids", "prompt_attention_mask", "answers", "tasks",
    }  # fmt: skip
    assert batch["prompt_input_ids"].tolist() == [[1, 2, 3], [PAD, PAD, 5]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["answers"] == ["a1", "a2"] and batch["tasks"] == ["t1", "t2"]


def test_predict_batch_has_prompts_and_no_labels():
    batch = Collator(PAD, "predict")(_examples())
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "answers", "tasks", "prompts"}
    assert batch["prompts"] == ["p1", "p2"]


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown collate mode 'x'"):
        Collator(PAD, "x")
