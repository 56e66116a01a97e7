"""ftzoo's LoRA and DoRA against raw peft (``get_peft_model``): the same outputs and gradients
for the same rank, targets, dropout and dtype, and adapters in the model's dtype by default."""

from __future__ import annotations

import pytest
import torch
from method_harness import base_model, batches
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from plugins.lora import DoRA, LoRA
from plugins.lora.config import LLM_ADAPTERS_TARGETS
from tools.bench.measure import SavedForBackward, count_memory
from zoo.prepare import prepare

BATCH = batches(count=1, seed=5)[0]
RANK, ALPHA, DROPOUT = 4, 8, 0.1


def ours(method: type[LoRA], dtype: torch.dtype, adapter_dtype: str) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """ftzoo's method prepared as ``fit`` prepares it, with ``B ≠ 0`` (so every gradient is non-zero)."""
    model = base_model(dtype=dtype)
    prepared = prepare(
        model,
        method(r=RANK, alpha=ALPHA, dropout=DROPOUT, adapter_dtype=adapter_dtype),
        calibration_batches=None,
        seed=0,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in prepared.trainable:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.train(), dict(prepared.trainable)


def theirs(model: nn.Module, dtype: torch.dtype, adapter_dtype: str, use_dora: bool) -> nn.Module:
    """Raw peft on the same base, holding ``model``'s adapter values."""
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=list(LLM_ADAPTERS_TARGETS),
        use_dora=use_dora, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(base_model(dtype=dtype), config, autocast_adapter_dtype=adapter_dtype == "float32")
    tensors = {f"base_model.model.{k}": t for k, t in get_peft_model_state_dict(model).items()}
    result = set_peft_model_state_dict(peft_model, tensors)
    assert not result.unexpected_keys
    return peft_model.train()


def step(model: nn.Module, trainable: dict[str, nn.Parameter]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (train mode: dropout on, drawn from a fixed seed) and the adapters' gradients."""
    torch.manual_seed(123)
    out = model(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"])
    logits = out.logits
    (logits.float().square().mean()).backward()
    grads = {name.removeprefix("base_model.model."): p.grad for name, p in trainable.items()}
    return logits.detach(), grads


@pytest.mark.parametrize("adapter_dtype", ["model", "float32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("method", [LoRA, DoRA], ids=["lora", "dora"])
def test_outputs_and_gradients_equal_raw_peft(method, dtype, adapter_dtype):
    model, trainable = ours(method, dtype, adapter_dtype)
    expected_dtype = torch.float32 if adapter_dtype == "float32" else dtype
    assert {p.dtype for p in trainable.values()} == {expected_dtype}
    peer = theirs(model, dtype, adapter_dtype, use_dora=method is DoRA)
    peer_trainable = {n: p for n, p in peer.named_parameters() if p.requires_grad}
    assert sorted(p.shape for p in peer_trainable.values()) == sorted(p.shape for p in trainable.values())
    assert {p.dtype for p in peer_trainable.values()} == {expected_dtype}
    logits, grads = step(model, trainable)
    peer_logits, peer_grads = step(peer, peer_trainable)
    assert grads.keys() == peer_grads.keys()
    if method is DoRA and dtype == torch.bfloat16 and adapter_dtype == "float32":
        # ftzoo's DoRA runs the dropout path's base matmul in the base's dtype (no float32 copy
        # of W, BaseDtypeDoraLayer), peft in float32: the same up to bf16 rounding of that term.
        assert relative_error(logits, peer_logits) < 1e-2  # bf16 logits: one ulp is 2^-8 of a value
        for name, grad in grads.items():
            assert grad.abs().sum() > 0 and relative_error(grad, peer_grads[name]) < 2e-2, name
        return
    # The same layers (peft's own) with the same values, dropout masks and dtype: the same numbers.
    torch.testing.assert_close(logits, peer_logits, rtol=0, atol=0)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, peer_grads[name], rtol=0, atol=0)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("method", [LoRA, DoRA], ids=["lora", "dora"])
def test_bfloat16_adapters_follow_the_float32_results_within_bfloat16_rounding(method):
    """A bf16 model with bf16 adapters (the default) computes what the float32 model computes,
    up to bf16 rounding (8 mantissa bits: ~0.4 % per rounding, a few % after a network)."""
    model32, trainable32 = ours(method, torch.float32, "model")
    model16, trainable16 = ours(method, torch.bfloat16, "model")
    with torch.no_grad():  # the same adapter values, rounded to bf16 in both
        for (name, p32), p16 in zip(trainable32.items(), trainable16.values()):
            p32.copy_(p16.float())
    logits32, grads32 = step(model32, trainable32)
    logits16, grads16 = step(model16, trainable16)
    assert relative_error(logits16, logits32) < 0.02
    for name, grad in grads16.items():
        assert relative_error(grad, grads32[name]) < 0.05, name


def saved_float32_weights(model: nn.Module) -> int:
    """How many float32 tensors shaped like an adapted weight ([out, in] or [in, out]) the forward pass saves."""
    shapes = {tuple(m.get_base_layer().weight.shape) for m in model.modules() if isinstance(m, LoraLayer)}
    shapes |= {s[::-1] for s in shapes}
    with SavedForBackward() as saved:
        loss = model(**{k: BATCH[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    alive = [t for t in (ref() for ref in saved.saved) if t is not None]
    del loss
    return sum(t.dtype == torch.float32 and tuple(t.shape) in shapes for t in alive)


def test_float32_dora_keeps_no_float32_copy_of_the_adapted_weights():
    """peft's DoRA with dropout and float32 adapters on a bf16 base keeps ``W.to(float32)`` of
    the adapted layers for backward; ftzoo's keeps none, and so saves fewer bytes."""
    model, trainable = ours(DoRA, torch.bfloat16, "float32")
    peer = theirs(model, torch.bfloat16, "float32", use_dora=True)
    assert saved_float32_weights(model) == 0 < saved_float32_weights(peer)
    batch = {k: BATCH[k] for k in ("input_ids", "attention_mask", "labels")}
    saved = count_memory(model, list(trainable.values()), batch)["activations"]
    peer_saved = count_memory(peer, [p for p in peer.parameters() if p.requires_grad], batch)["activations"]
    assert saved < peer_saved
