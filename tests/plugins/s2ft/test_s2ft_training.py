"""Partial backpropagation: S²FT gradients are full fine-tuning's, restricted to the slices."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from s2ft_cases import ALL_ROLES

from plugins.s2ft.layers import S2FTLinear
from zoo.distributed import unshare_parameters
from zoo.plugins import method_hooks

SMOLLM2_GROUPS = {"hidden_size": 72, "num_attention_heads": 9, "num_key_value_heads": 3}


def full_gradients(base, batch):
    """Gradients of every base parameter (a plain, unrewritten model)."""
    model = copy.deepcopy(base).requires_grad_(True)
    model(**batch).loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "arch,shape",
    [("llama-gqa", None), ("llama-mha", None), ("qwen2", None), ("mistral", None), ("llama-gqa", SMOLLM2_GROUPS)],
    ids=["llama-gqa", "llama-mha", "qwen2-bias", "mistral", "smollm2-groups"],
)
def test_gradients_equal_full_fine_tuning_restricted(s2, arch, shape):
    r = s2.rewritten(arch, shape=shape, seed=5, **ALL_ROLES)
    batch = s2.make_batch(3)
    expected = full_gradients(r.base, batch)
    r.model(**batch).loss.backward()
    for name, layer in s2.s2ft_layers(r.model).items():
        grad, index = s2.base_coordinates(layer, layer.s2ft_weight.grad)
        torch.testing.assert_close(
            grad, expected[f"{name}.weight"].index_select(layer.dim, index), rtol=1e-10, atol=1e-12
        )
        if layer.s2ft_bias is not None:
            bias_grad, index = s2.base_coordinates(layer, layer.s2ft_bias.grad)
            torch.testing.assert_close(bias_grad, expected[f"{name}.bias"][index], rtol=1e-10, atol=1e-12)
    frozen_with_grad = [n for n, p in r.model.named_parameters() if p.grad is not None and "s2ft_" not in n]
    assert frozen_with_grad == []


def test_only_selected_slices_change_and_adapter_reproduces_training(s2):
    r = s2.rewritten("llama-gqa", shape=SMOLLM2_GROUPS, seed=2, **ALL_ROLES)
    hooks = method_hooks(r.method)
    params = [p for _, p in hooks.ftzoo_trainable_parameters(model=r.model)]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        r.model(**s2.make_batch(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = hooks.ftzoo_extract_adapter(model=r.model, selection=r.selection)
    from zoo import Adapter, BaseModelInfo

    adapter = Adapter("s2ft", r.method.config(), r.selection, BaseModelInfo.of(r.base, "tiny"), tensors)
    fused = copy.deepcopy(r.base)
    hooks.ftzoo_fuse_adapter(model=fused, adapter=adapter, scale=1.0)
    batch = s2.make_batch(7)
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, r.model(**batch).logits, rtol=1e-10, atol=1e-10)
    # In base coordinates, exactly the selected slices differ.
    selected = {}
    for entry in r.selection["projections"]:
        rows = torch.zeros(entry["num_units"], dtype=torch.bool)
        rows[entry["units"]] = True
        selected[entry["module"]] = (entry["dim"], rows.repeat_interleave(entry["unit_size"]))
    for name, p in r.base.named_parameters():
        changed = fused.get_parameter(name) != p
        module, kind = name.rsplit(".", 1)
        if module not in selected or (kind == "bias" and selected[module][0] == 1):
            assert not changed.any(), name
            continue
        dim, mask = selected[module]
        along = changed.any(dim=1 - dim) if changed.ndim == 2 else changed
        assert torch.equal(along, mask), name  # every selected row/column moved, nothing else


def test_gradient_accumulation_equals_one_large_batch(s2):
    r = s2.rewritten("llama-mha", seed=1, **ALL_ROLES)
    big = s2.make_batch(4, batch=4)
    halves = [{k: v[i : i + 2] for k, v in big.items()} for i in (0, 2)]
    twin = copy.deepcopy(r.model)
    r.model(**big).loss.backward()
    for half in halves:
        (twin(**half).loss / 2).backward()
    for (name, p), (_, q) in zip(r.model.named_parameters(), twin.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12)


def saved_bytes(fn, exclude):
    """Bytes of the distinct storages autograd saves while running ``fn`` (minus ``exclude``)."""
    storages = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("dim", [1, 0])
def test_saved_activations_are_only_the_selected_slice(dim):
    base = torch.nn.Linear(64, 48, bias=True)
    runs = [(8, 24)] if dim == 1 else [(16, 32)]
    layer = S2FTLinear(base, dim, runs, slot_units=list(range(16)), unit_size=1)
    x = torch.randn(4, 10, 64, requires_grad=True)
    nbytes, y = saved_bytes(lambda: layer(x), exclude=list(layer.parameters()))  # parameters: no new memory
    expected = 4 * 10 * 16 * 4 if dim == 1 else x.numel() * 4  # columns: x[..., 8:24]; rows: all of x
    assert nbytes == expected
    y.sum().backward()
    assert layer.weight.grad is None and layer.s2ft_weight.grad.shape == ((48, 16) if dim == 1 else (16, 64))


def test_frozen_projection_saves_nothing_extra(s2):
    """A rewritten model saves, beyond what the frozen model saves, only the column slices."""
    r = s2.rewritten("llama-gqa", dtype=torch.float32, seed=0, o_heads=2, down_channels=8, allocation="per_layer")
    batch = s2.make_batch(0)
    frozen = copy.deepcopy(r.base).requires_grad_(False)  # the frozen floor: backward through every block
    frozen.model.layers[0].input_layernorm.weight.requires_grad_(True)
    params = list(r.model.parameters()) + list(r.model.buffers())
    s2ft_bytes, _ = saved_bytes(lambda: r.model(**batch).loss, exclude=params)
    frozen_bytes, _ = saved_bytes(
        lambda: frozen(**batch).loss, exclude=list(frozen.parameters()) + list(frozen.buffers())
    )
    tokens = batch["input_ids"].numel()
    slices = 2 * tokens * (2 * 16 + 8) * 4  # 2 layers × (2 O heads of 16 columns + 8 down channels) × fp32
    assert s2ft_bytes <= frozen_bytes + slices


def test_bf16_autocast_step_runs(s2):
    r = s2.rewritten("qwen2", dtype=torch.float32, seed=0, **ALL_ROLES)
    params = [p for n, p in r.model.named_parameters() if "s2ft_" in n]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = r.model(**s2.make_batch(0)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))


def test_bf16_model_trains(s2):
    r = s2.rewritten("llama-gqa", dtype=torch.bfloat16, seed=0, **ALL_ROLES)
    params = [p for n, p in r.model.named_parameters() if "s2ft_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for step in range(2):
        r.model(**s2.make_batch(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == torch.bfloat16 for p in params)


def test_gradient_checkpointing_gives_the_same_gradients(s2):
    r = s2.rewritten("llama-gqa", seed=3, **ALL_ROLES)
    twin = copy.deepcopy(r.model)
    twin.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    twin.train()
    batch = s2.make_batch(5)
    r.model(**batch).loss.backward()
    twin(**batch, use_cache=False).loss.backward()
    for (name, p), (_, q) in zip(r.model.named_parameters(), twin.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12)


def _expected(layer: S2FTLinear, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W`` (and ``b``) with the runs replaced by the layer's trained slice."""
    weight, bias = weight.clone(), None if bias is None else bias.clone()
    for (a, b), offset in zip(layer.runs, [0, *itertools.accumulate(b - a for a, b in layer.runs)]):
        weight.narrow(layer.dim, a, b - a).copy_(layer.s2ft_weight.detach().narrow(layer.dim, offset, b - a))
        if layer.s2ft_bias is not None:
            bias[a:b] = layer.s2ft_bias.detach()[offset : offset + b - a]
    return weight, bias


def _train_a_little(layers: dict[str, S2FTLinear]) -> None:
    with torch.no_grad():
        for layer in layers.values():
            layer.s2ft_weight.add_(0.5)  # what an optimizer step does: an in-place update
            if layer.s2ft_bias is not None:
                layer.s2ft_bias.sub_(0.25)


def _check_trained(layers: dict[str, S2FTLinear], originals: dict[str, tuple], steps: int = 1) -> None:
    """Each layer computes ``W`` with its slice replaced, and its delta is what was added."""
    for name, layer in layers.items():
        weight, bias = _expected(layer, *originals[name])
        x = torch.randn(2, 5, layer.in_features, dtype=layer.weight.dtype)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, bias))
        delta_weight, delta_bias = layer.delta()
        torch.testing.assert_close(delta_weight, torch.full_like(delta_weight, 0.5 * steps))
        if delta_bias is not None:
            torch.testing.assert_close(delta_bias, torch.full_like(delta_bias, -0.25 * steps))


def test_forward_uses_the_current_slice_in_place_or_beside_the_base(s2):
    """One run: the slice trains inside ``W`` (no second copy); several runs: ``W`` is never written."""
    r = s2.rewritten(
        "qwen2", seed=0, shape=SMOLLM2_GROUPS, o_heads=4, v_heads=1, down_channels=3, allocation="per_layer"
    )  # 4 of 9 query heads in groups of 3: some O slices are two runs
    layers = s2.s2ft_layers(r.model)
    assert {layer.in_place for layer in layers.values()} == {True, False}  # both kinds are checked
    originals = {name: (layer.weight.detach().clone(), layer.bias) for name, layer in layers.items()}
    originals = {n: (w, None if b is None else b.detach().clone()) for n, (w, b) in originals.items()}
    _train_a_little(layers)
    for name, layer in layers.items():
        if layer.in_place:
            assert layer.s2ft_weight.untyped_storage().data_ptr() == layer.weight.untyped_storage().data_ptr()
            torch.testing.assert_close(layer.weight, _expected(layer, *originals[name])[0], rtol=0, atol=0)
        else:
            assert torch.equal(layer.weight, originals[name][0])  # the frozen base is untouched
    _check_trained(layers, originals)


def test_in_place_slices_survive_copies_moves_and_checkpoints(s2):
    r = s2.rewritten("llama-mha", dtype=torch.float32, seed=0, o_heads=2, down_channels=3, allocation="per_layer")
    layers = s2.s2ft_layers(r.model)
    assert all(layer.in_place for layer in layers.values())
    originals = {name: (layer.weight.detach().clone(), None) for name, layer in layers.items()}
    _train_a_little(layers)
    state = r.model.state_dict()
    for name in layers:  # the slice alone, not W's whole storage
        saved = state[f"{name}.s2ft_weight"]
        assert saved.untyped_storage().nbytes() == saved.numel() * saved.element_size()
    twin = copy.deepcopy(r.model)  # parts P from W: the correction path takes over, still the trained layer
    twin_layers = s2.s2ft_layers(twin)
    assert not any(layer._aliased() for layer in twin_layers.values())
    _train_a_little(twin_layers)
    _check_trained(twin_layers, originals, steps=2)
    twin.to(torch.float64).to("cpu")  # a parted layer stays parted (FSDP relies on it)
    assert not any(layer._aliased() for layer in twin_layers.values())
    _check_trained(twin_layers, {n: (w.double(), None) for n, (w, _) in originals.items()}, steps=2)
    r.model.to(torch.float64).to("cpu")  # a cast or move keeps an in-place slice the view of W
    assert all(layer._aliased() for layer in layers.values())
    _check_trained(layers, {n: (w.double(), None) for n, (w, _) in originals.items()})
    r.model.to(torch.float32)
    reloaded = copy.deepcopy(r.model)
    reloaded.load_state_dict({k: v for k, v in twin.state_dict().items() if "s2ft_" in k}, strict=False)
    _check_trained(s2.s2ft_layers(reloaded), originals, steps=2)  # a checkpoint's slices land inside W


def test_dtype_moves_keep_the_layer_consistent(s2):
    r = s2.rewritten("llama-gqa", dtype=torch.float32, seed=0, o_heads=2, v_heads=1, allocation="per_layer")
    r.model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in r.model.parameters())
    for layer in s2.s2ft_layers(r.model).values():
        assert list(layer.buffers()) == []  # nothing extra for DDP to broadcast every step
    loss = r.model(**s2.make_batch(0)).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_unshared_slices_train_as_before(s2):
    """Before FSDP wraps the model the module gives every view parameter its own storage
    (FSDP's flat parameters need contiguous, unshared ones); the layers then train through the
    correction path, to the same values."""
    r = s2.rewritten("llama-mha", dtype=torch.float32, seed=0, o_heads=2, down_channels=3, allocation="per_layer")
    layers = s2.s2ft_layers(r.model)
    originals = {name: (layer.weight.detach().clone(), None) for name, layer in layers.items()}
    assert unshare_parameters(r.model) == len(layers)
    assert all(layer.s2ft_weight.is_contiguous() and not layer._aliased() for layer in layers.values())
    assert unshare_parameters(r.model) == 0
    _train_a_little(layers)
    _check_trained(layers, originals)
    batch = s2.make_batch(1)
    r.model(**batch).loss.backward()
    assert all(layer.s2ft_weight.grad is not None for layer in layers.values())
