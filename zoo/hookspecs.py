"""The hooks through which a fine-tuning method acts on the model.

A *method* (S²FT, LoRA, full fine-tuning, ...) is a :class:`zoo.Method` subclass whose
instance methods are marked with :data:`zoo.hookimpl`. ftzoo never names a method: it
calls these hooks and the chosen method answers.

Who answers
-----------
Each method gets its own plugin manager (:func:`zoo.plugins.method_hooks`, built once per
run; tools reuse one per method and config through :func:`zoo.plugins.hooks_of`) that
holds exactly two plugins: the chosen method instance and
:class:`zoo.defaults.CoreDefaults`, whose implementations are ``trylast``. Hooks that
return a value are ``firstresult``, so the method's answer wins and the core default
answers only where the method has no implementation (or returns ``None`` to decline).
Hooks that return nothing call the method's implementation, if any. Call every hook with
keyword arguments; an implementation may take fewer arguments than its spec.

Every hook below says *when* it is called, whether the *first result* wins, and *who*
implements it: **required** (every method; checked when the method is loaded,
:func:`zoo.plugins.check_method`), **core default** (the core answers unless the method
does), or **optional** (nobody answers unless a method does).

==============================  ===========  ============  ==============================
hook                            when         first result  who implements
==============================  ===========  ============  ==============================
``ftzoo_quantized_base``        fit, first   yes           core default (``False``: refuse)
``ftzoo_select_parameters``     fit, once    yes           required
``ftzoo_rewrite_model``         every build  no            required
``ftzoo_trainable_parameters``  every build  yes           core default (``requires_grad``)
``ftzoo_before_backward``       micro-batch  no            optional
``ftzoo_after_backward``        micro-batch  no            optional
``ftzoo_before_optimizer_step`` step         no            optional
``ftzoo_after_optimizer_step``  step         no            optional
``ftzoo_extract_adapter``       checkpoints  yes           core default (trainable tensors)
``ftzoo_save_adapter_files``    adapter save no            optional
``ftzoo_adapter_deltas``        tools        yes           required
``ftzoo_load_adapter``          evaluation   yes           core default (fuse)
``ftzoo_fuse_adapter``          tools        yes           core default (add deltas)
``ftzoo_unfuse_adapter``        tools        yes           core default (restore)
``ftzoo_serving_deltas``        serve        yes           core default (delta slices)
``ftzoo_merge_adapters``        merge        yes           optional (``None``: dense merge)
==============================  ===========  ============  ==============================

Order in which ``lightning fit`` calls the hooks
------------------------------------------------
0. ``ftzoo_quantized_base``     -- only with ``--model.quantization nf4|int8``, before the base
   is loaded: a method that cannot train beside quantized weights is refused here.
1. load: the base model is loaded and every parameter frozen (``requires_grad=False``); with a
   quantization, its linear layers are then quantized (:mod:`zoo.quantization`).
2. ``ftzoo_select_parameters``  -- once, on rank 0; the result is broadcast to all ranks.
3. ``ftzoo_rewrite_model``      -- every rank, with the same selection. Then (not under
   quantization) ``ftzoo_extract_adapter`` and ``ftzoo_adapter_deltas`` once on the untrained
   rewrite: every delta must be zero, of a base parameter, of its shape, or the method is
   refused before the first step (:func:`zoo.prepare.check_untrained_deltas`).
4. ``ftzoo_trainable_parameters`` -- the optimizer is built over exactly these.
5. per optimizer step: ``ftzoo_before_backward`` → backward → ``ftzoo_after_backward``
   (per micro-batch), then ``ftzoo_before_optimizer_step`` → step →
   ``ftzoo_after_optimizer_step``.
   Checkpoints hold the tensors ``ftzoo_trainable_parameters`` names, plus the selection.
6. ``ftzoo_extract_adapter``    -- at the end of fit, when the adapter is written to the run
   folder (then ``ftzoo_save_adapter_files``).

The adapter runtime (:mod:`zoo.inference`, :mod:`zoo.merging`; the tools are command lines
over it) and validation with a trained adapter call ``ftzoo_load_adapter``,
``ftzoo_adapter_deltas``, ``ftzoo_fuse_adapter``, ``ftzoo_unfuse_adapter``,
``ftzoo_serving_deltas`` and ``ftzoo_merge_adapters``.

Terms
-----
*model*: the Hugging Face ``PreTrainedModel`` (causal LM), possibly rewritten by the method.
*selection*: what the method chose to train, as a picklable, JSON-able structure (dicts,
lists, numbers, strings); it is stored in checkpoints and adapters so that the same
rewrite can be rebuilt on a fresh base model.
*adapter*: a :class:`zoo.adapter.Adapter`: the trained update, decoupled from the base
model and expressed in the base model's own coordinates and parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.adapter import Adapter
    from zoo.merging.combine import MergeOptions

PROJECT = "ftzoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------
# load: can the method train on a quantized base?
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_quantized_base(quantization: str) -> bool:
    """Whether the method trains on a base whose linear weights are quantized.

    *When*: with ``--model.quantization nf4|int8`` (:mod:`zoo.quantization`), before the base
    is loaded, and in :func:`zoo.prepare.prepare` for a model that is already quantized; a
    ``False`` refuses the run before anything is loaded or changed. *First result wins.
    Core default*: ``False``, so a method that never thought about quantized weights is
    refused with a clear message instead of failing inside its rewrite.

    A method that answers ``True`` must train *beside* the quantized weights (an update in
    float, a low-rank pair, values at chosen entries), never the quantized tensors themselves,
    and its adapter must stay in the base's float coordinates so that it also applies to the
    unquantized base. Full fine-tuning answers ``False``.

    Args:
        quantization: ``"nf4"`` or ``"int8"``.

    Returns:
        ``True`` if the method can train on such a base.
    """


# ---------------------------------------------------------------------------------------
# select: choose what to train
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_select_parameters(
    model: nn.Module,
    calibration_batches: Callable[[], Iterator[dict[str, torch.Tensor]]],
    seed: int,
) -> Any:
    """Choose what to train, before the model is rewritten.

    *When*: once per ``fit`` on rank 0 (the result is broadcast to the other ranks), after
    the base model is loaded and frozen; never when resuming or loading an adapter (then
    the stored selection is used). *First result wins. Required.* The selection is checked
    at once (:func:`zoo.prepare.check_selection`): it must be JSON.

    Args:
        model: the frozen base model, on the training device.
        calibration_batches: call it to get an iterator over a few training batches
            (dicts of ``input_ids``, ``attention_mask``, ``labels`` on the model's device),
            for methods that score parameters by activations or gradients. Methods that do
            not need data never call it, so no data is loaded for them.
        seed: the run's seed, for methods that choose at random.

    Returns:
        The selection (picklable and JSON-able), or ``None`` if the method has nothing to
        choose.
    """


# ---------------------------------------------------------------------------------------
# rewrite: change the model so that the selection can train
# ---------------------------------------------------------------------------------------


@hookspec
def ftzoo_rewrite_model(model: nn.Module, selection: Any) -> None:
    """Rewrite the frozen model in place so that the selected part can train.

    *When*: every time a model is built for training (fit, resume, a rebuilt selection),
    right after the selection. *No result. Required.*

    Called on every rank with the same ``selection`` (the result of
    :func:`ftzoo_select_parameters` or the one stored in a checkpoint or adapter). A method
    may replace modules, permute weights, add parameters and set ``requires_grad``, but
    must keep the model's outputs unchanged before training and must not copy the frozen
    base weights. It must check every module it will change before changing any
    (:func:`zoo.targets.check_trainable_modules`), so that a refusal (a quantized or integer
    weight, a selection that does not fit) leaves the model exactly as it was. Parameters it
    *adds* must have names containing the method's prefix (:attr:`zoo.Method.prefix`): the
    core checks this right after the rewrite (:func:`zoo.prepare.check_prefix`). After the
    rewrite something must be trainable (``requires_grad=True``), or the core says so.

    Args:
        model: the base model, every parameter frozen.
        selection: what to train.
    """


# ---------------------------------------------------------------------------------------
# trainable parameters
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Name the parameters the optimizer updates.

    *When*: after every rewrite, and at every checkpoint save and load. *First result
    wins. Core default*: every parameter with ``requires_grad=True``.

    Called after the rewrite. The core default returns every parameter with
    ``requires_grad=True``. The optimizer sees only these; checkpoints hold only these
    (plus the selection), never the frozen base.

    Returns:
        ``(name, parameter)`` pairs, names as in ``model.named_parameters()``.
    """


# ---------------------------------------------------------------------------------------
# backward and optimizer step
# ---------------------------------------------------------------------------------------


@hookspec
def ftzoo_before_backward(model: nn.Module, loss: torch.Tensor) -> None:
    """Look at the loss of a micro-batch before its backward pass.

    *When*: before ``loss.backward()`` of every micro-batch (with
    ``accumulate_grad_batches=k``, k times per optimizer step; Lightning's
    ``on_before_backward``). *No result. Optional*: no built-in method implements it; it
    is for methods that hook the backward pass (e.g. register tensor hooks on the graph).

    Args:
        model: the rewritten model.
        loss: the micro-batch's loss (scaled for accumulation as Lightning does).
    """


@hookspec
def ftzoo_after_backward(model: nn.Module) -> None:
    """Mask or inspect gradients after a micro-batch's backward pass.

    *When*: after the backward pass of every micro-batch, before the next micro-batch
    (gradients are partial sums while accumulating; Lightning's ``on_after_backward``).
    *No result. Optional*: no built-in method implements it.
    """


@hookspec
def ftzoo_before_optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """See the accumulated gradients just before the update.

    *When*: once per optimizer step, after the last micro-batch's backward and gradient
    clipping, before ``optimizer.step()`` (Lightning's ``on_before_optimizer_step``).
    *No result. Optional*: no built-in method implements it.
    """


@hookspec
def ftzoo_after_optimizer_step(model: nn.Module) -> None:
    """Re-apply a constraint to the weights after an update (a projection, a mask).

    *When*: right after every ``optimizer.step()``, before the next step's first
    micro-batch. *No result. Optional*: no built-in method implements it.
    ``tests/zoo/test_hook_order.py`` proves the order of these four under accumulation.
    """


# ---------------------------------------------------------------------------------------
# extract / load: the adapter
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_extract_adapter(model: nn.Module, selection: Any) -> dict[str, torch.Tensor]:
    """Extract the trained update as tensors, decoupled from the base model.

    *When*: at the end of ``fit`` (on rank 0, with whole parameters under FSDP). *First
    result wins. Core default*: the trainable parameters by name, right for methods whose
    added parameters are already in base coordinates (LoRA).

    The tensors must describe the update in the *base model's* coordinates (undo any
    permutation) so that :func:`ftzoo_load_adapter` can apply them to a plain copy of the
    base. They are saved with safetensors, so they must be contiguous and not share
    memory.

    Args:
        model: the rewritten (trained) model.
        selection: the run's selection.

    Returns:
        Tensor name → tensor (on CPU or the model's device; the core moves them to CPU).
    """


@hookspec(firstresult=True)
def ftzoo_load_adapter(model: nn.Module, adapter: Adapter) -> bool | None:
    """Make a plain base model compute what the trained model computed.

    *When*: ``validate``/``test``/``predict`` with ``--model.adapter``. *First result
    wins. Core default*: fuse (below).

    Used by ``validate``/``test``/``predict`` with ``--model.adapter`` and by the tools.
    The core default fuses the adapter into the weights (:func:`ftzoo_fuse_adapter`,
    scale 1). A method may instead rewrite the model so that training can continue.

    Returns:
        ``True`` when handled.
    """


@hookspec
def ftzoo_save_adapter_files(adapter: Adapter, folder: str) -> None:
    """Write extra files into an adapter folder that is being saved.

    *When*: every ``save_adapter`` (end of fit, merge). *No result. Optional* (LoRA
    implements it).

    Called with the temporary folder, before it is moved into place, so that what a
    method adds is atomic with the rest (e.g. LoRA writes PEFT's own
    ``adapter_config.json`` and ``adapter_model.safetensors`` beside ftzoo's files).
    """


@hookspec(firstresult=True)
def ftzoo_adapter_deltas(adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter as dense weight differences of the base model's parameters.

    *When*: by the tools and every core default below (merge combines these, fuse adds
    them, serving slices them, export and serve check their names and shapes), and once at
    the start of ``fit`` on the adapter of the untrained rewrite, where every delta must be
    zero. *First result wins. Required*: a method without it is refused when it is loaded.
    ``model`` is a plain base model (for shapes, dtype, device).

    Returns:
        Base parameter name (as in ``model.named_parameters()``) → tensor of that
        parameter's shape with ``fused_weight - base_weight``.
    """


# ---------------------------------------------------------------------------------------
# fuse / unfuse
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_fuse_adapter(model: nn.Module, adapter: Adapter, scale: float) -> Any:
    """Add the adapter's update into the weights of a plain base model, in place.

    *When*: loading for evaluation, switch, export, merge ``--fuse``. *First result wins.
    Core default* (below).

    The core default adds :func:`ftzoo_adapter_deltas` to every named parameter and keeps
    the original values of what it touched, so that unfusing restores the base exactly.
    Methods whose update touches only part of a weight (S²FT, sparse masks) should
    implement a cheaper version.

    Args:
        model: a plain base model (not rewritten).
        adapter: the adapter to fuse.
        scale: multiplier of the update (1.0 = the trained model).

    Returns:
        An undo record, passed back to :func:`ftzoo_unfuse_adapter`.
    """


@hookspec(firstresult=True)
def ftzoo_unfuse_adapter(model: nn.Module, adapter: Adapter, undo: Any) -> bool | None:
    """Restore the weights that :func:`ftzoo_fuse_adapter` changed, exactly.

    *When*: switching away from an adapter. *First result wins. Core default*: copy back
    what the default fuse kept.

    Args:
        model: the model the adapter was fused into.
        adapter: the fused adapter.
        undo: the record that :func:`ftzoo_fuse_adapter` returned.

    Returns:
        ``True`` when handled.
    """


# ---------------------------------------------------------------------------------------
# serve: many adapters in one batch, unfused
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_serving_deltas(adapter: Adapter, model: nn.Module) -> dict[str, nn.Module]:
    """The adapter as small modules that run beside the frozen base, for mixed batches.

    *When*: when serve loads an adapter (:class:`zoo.inference.MixedAdapterModel`).
    *First result wins. Core default* (below); LoRA implements it.

    ``tools/serve.py`` runs every base linear layer once for the whole batch and adds, to
    the rows of each request, the output of that request's adapter module. The core
    default derives the modules from :func:`ftzoo_adapter_deltas`, keeping only the
    nonzero rows or columns of each delta, so a structured sparse update (S²FT) costs only
    its slice; methods with a cheaper form (LoRA's two low-rank factors) implement this.

    Args:
        adapter: the adapter to serve.
        model: the plain base model (for shapes, dtype, device).

    Returns:
        Name of a base module (as in ``model.named_modules()``: usually an ``nn.Linear``;
        the default also covers embeddings and norms) → module mapping that module's input
        to the change of its output (for a linear: ``[..., in_features]`` →
        ``[..., out_features]``). A module whose ``takes_base_output`` is true is called with
        the input and the base module's output on the same rows (DoRA's change rescales it).

    A delta module may also say what form its change has, so that the mixed model batches it
    with the same form of other adapters' deltas of that module (one product for all of them
    instead of one per adapter); the core never asks which method it belongs to:

    * ``low_rank()`` → :class:`zoo.LowRankParts` (or ``None``): ``A``, ``B``, the scaling, and
      DoRA's vectors (LoRA and DoRA).
    * ``sparse()`` → :class:`zoo.SparseParts` (or ``None``): the change ``x Δᵀ`` of a sparse
      ``Δ`` [out, in] in CSR form (sparse masks).

    The module's ``forward`` must compute the same change: it runs when the form is not batched
    (one adapter of that form in the batch, or inputs too wide for the batched product to pay).
    """


# ---------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ftzoo_merge_adapters(adapters: list[Adapter], weights: list[float], options: MergeOptions) -> Adapter | None:
    """Combine adapters of this method into one adapter of the same method.

    *When*: :func:`zoo.merging.merge_adapters` (``tools/merge.py``), with adapters that
    share the base model and all come from this method. *First result wins. Optional*:
    without it (or when it returns ``None``) the adapters' dense deltas are combined into
    a ``merged`` adapter. What it returns must give the update that
    :func:`zoo.merging.combine` computes from the dense deltas with the same ``options``
    (the reference; the contract suite checks every formula), so decline any formula it
    cannot match exactly.

    Args:
        adapters: the adapters, all of this method.
        weights: one weight per adapter.
        options: the formula and its settings (:class:`zoo.merging.MergeOptions`; its
            defaults are every method's defaults).
    """


def iter_hookspec_names() -> Iterable[str]:
    """Names of every declared hook, for listing and documentation."""
    return sorted(name for name in globals() if name.startswith("ftzoo_"))
