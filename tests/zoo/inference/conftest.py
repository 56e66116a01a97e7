"""What the batcher's tests share: a tiny base model (grouped-query attention)."""

import pytest
from tiny_models import tiny_model

from zoo.adapter import BaseModelInfo


@pytest.fixture(scope="module")
def base():
    model = tiny_model("llama-gqa").requires_grad_(False)
    return model, BaseModelInfo.of(model, "tiny")
