"""The response loss: logits only where a labelled token is predicted, the value and gradients
of transformers' own ``labels=`` loss."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tiny_models import ARCHITECTURES, tiny_model
from zoo.loss import IGNORE_INDEX, keeps_selected_logits, predicting_positions, response_loss


def batch(vocab: int = 260, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of 9 tokens: a right-padded one and a full one, responses of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 7:] = 0
    labels = input_ids.clone()
    labels[0, :4] = IGNORE_INDEX  # prompt
    labels[0, 7:] = IGNORE_INDEX  # padding
    labels[1, :6] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_a_position_predicts_the_next_labelled_token():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    assert predicting_positions(labels).tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_value_and_gradients_equal_the_labels_loss(arch):
    model = tiny_model(arch).train().requires_grad_(True)
    data = batch()
    assert keeps_selected_logits(model)
    reference = model(**data, use_cache=False).loss
    expected = torch.autograd.grad(reference, list(model.parameters()), allow_unused=True)
    loss = response_loss(model, data)
    got = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, reference)
    for a, b in zip(got, expected):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b)


def test_the_sum_counts_every_labelled_token_once():
    model, data = tiny_model(), batch()
    labelled = int((data["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(response_loss(model, data, reduction="sum"), response_loss(model, data) * labelled)


def test_a_peft_model_keeps_selected_logits_too():
    model = tiny_model().requires_grad_(False)
    reference = model(**batch(), use_cache=False).loss
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=True))
    assert keeps_selected_logits(peft_model)
    torch.testing.assert_close(response_loss(peft_model, batch()), reference)


class WithoutLogitsToKeep(nn.Module):
    """A causal LM whose forward predates ``logits_to_keep``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model()

    def forward(self, input_ids, attention_mask, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_a_model_without_logits_to_keep_gets_every_logit():
    model = WithoutLogitsToKeep()
    assert not keeps_selected_logits(model)
    torch.testing.assert_close(response_loss(model, batch()), model.inner(**batch(), use_cache=False).loss)


class IgnoresLogitsToKeep(WithoutLogitsToKeep):
    def forward(self, input_ids, attention_mask, use_cache=False, logits_to_keep=0):
        return super().forward(input_ids, attention_mask, use_cache)


def test_a_model_that_ignores_logits_to_keep_is_named():
    with pytest.raises(RuntimeError, match="IgnoresLogitsToKeep took a boolean logits_to_keep but returned logits of shape"):
        response_loss(IgnoresLogitsToKeep(), batch())
