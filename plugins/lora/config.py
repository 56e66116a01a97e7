"""LoRA/DoRA options and their translation into PEFT's :class:`peft.LoraConfig`.

ftzoo keeps the method's options as the method's ``__init__`` arguments (see
:class:`plugins.lora.plugin.LoRA`); this module turns them into the ``LoraConfig`` that PEFT
injects with, and into the config written beside an exported adapter.

Scaling (Hu et al., 2021, §4.1; rsLoRA, Kalajdzievski, 2023)::

    h = W x + s · B A x,    s = alpha / r          (use_rslora: s = alpha / sqrt(r))

An adapter whose rank differs from the method's ``r`` (a PiSSA/OLoRA adapter converted to
plain LoRA has rank 2r, see :mod:`plugins.lora.model`) keeps ``s`` by rescaling ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig

LLM_ADAPTERS_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
"""Default targets: LLM-Adapters' LoRA on LLaMA (Hu et al., 2023), also DoRA's setting."""

OUTPUT_PRESERVING_INITS = ("gaussian", "pissa", "olora")
"""``init_lora_weights`` strings accepted besides ``True`` (and ``pissa_niter_<n>``): the
inits under which the rewritten model computes what the base did. ``orthogonal`` and
``False`` start with ``B A != 0`` and change the outputs; ``eva``, ``corda``, ``lora_ga`` and
``loftq`` need data or quantization passes that ftzoo does not run."""

BASE_MUTATING_INITS = ("pissa", "olora")
"""Inits that move part of ``W`` into ``B A`` (``W_res = W - s B0 A0``)."""


def check_init(init_lora_weights: bool | str, use_dora: bool) -> None:
    """Raise ``ValueError`` for an ``init_lora_weights`` ftzoo cannot train or export."""
    if init_lora_weights is True:
        return
    if not isinstance(init_lora_weights, str) or not (
        init_lora_weights in OUTPUT_PRESERVING_INITS or init_lora_weights.startswith("pissa_niter_")
    ):
        raise ValueError(
            f"init_lora_weights={init_lora_weights!r} is not supported; use True, 'gaussian', 'pissa', "
            f"'pissa_niter_<n>' or 'olora' (inits that keep the model's outputs unchanged before training)"
        )
    if use_dora and mutates_base(init_lora_weights):
        raise ValueError(f"DoRA with init_lora_weights={init_lora_weights!r} cannot be exported as a plain adapter")


def mutates_base(init_lora_weights: bool | str) -> bool:
    """Whether the init rewrites the base weight (PiSSA, OLoRA)."""
    return isinstance(init_lora_weights, str) and init_lora_weights.startswith(BASE_MUTATING_INITS)


def peft_config(
    options: dict[str, Any], target_modules: str | Sequence[str], rank: int | None = None, **extra: Any
) -> LoraConfig:
    """The ``LoraConfig`` for the method options ``options`` (a :meth:`Method.config` dict).

    Args:
        options: the LoRA method's config (``r``, ``alpha``, ``dropout``, ...).
        target_modules: what to inject into (names or a regex, PEFT's rule).
        rank: the rank of stored tensors, when it differs from ``options["r"]``; ``alpha`` is
            rescaled so that the scaling ``s`` stays the same.
        extra: further ``LoraConfig`` fields (``init_lora_weights``, ``base_model_name_or_path``).
    """
    r = options["r"]
    rank = rank or r
    alpha = options["alpha"] * (math.sqrt(rank / r) if options["use_rslora"] else rank / r)
    fields = {
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": options["dropout"],
        "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
        "use_rslora": options["use_rslora"],
        "use_dora": options["use_dora"],
        "bias": options["bias"],
        "init_lora_weights": options["init_lora_weights"],
    }
    return LoraConfig(**{**fields, **extra})


def stored_rank(tensors: dict[str, torch.Tensor]) -> int:
    """The rank of the ``lora_A`` tensors of a stored adapter (all targets share one rank)."""
    ranks = {t.shape[0] for name, t in tensors.items() if name.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"a LoRA adapter must have one rank for every target, found {sorted(ranks)}")
    return ranks.pop()
