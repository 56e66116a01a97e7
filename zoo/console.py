"""A quiet console: what ftzoo's users cannot act on is not printed; warnings that matter are.

Silenced, each by its exact message (nothing else from these sources is):

* Lightning's advertising tips (``💡 Tip: ... litlogger`` / ``litmodels``), logged through
  ``lightning.pytorch.utilities.rank_zero`` at every ``fit``;
* the ``isinstance(treespec, LeafSpec)`` deprecation warning that Lightning's own pytree
  helper triggers in recent torch (Lightning's code, not the user's);
* bitsandbytes' notice, at import on CPUs with AVX512-BF16, that it could not fetch an optional
  kernel from the Hugging Face hub (``pip install kernels``): ftzoo never downloads at run time,
  and bitsandbytes falls back to its own CPU kernels; and the ``kernels`` package's notice,
  on the same attempt offline, that it skips its publisher check for that kernel;
* the progress bars of loading a base model (transformers' "Loading weights" and the GGUF
  de-quantization bar) are switched off for the load (:func:`zoo.loading.load_model`).
"""

from __future__ import annotations

import logging
import warnings

TIP_PREFIX = "💡 Tip:"
BNB_KERNEL_PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_KERNEL_TRUST_PREFIX = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


_TIPS = _DropPrefix(TIP_PREFIX)
_BNB_KERNEL = _DropPrefix(BNB_KERNEL_PREFIX)
FILTERS = {
    "lightning.pytorch.utilities.rank_zero": _TIPS,
    "pytorch_lightning.utilities.rank_zero": _TIPS,
    "bitsandbytes.backends.cpu.ops": _BNB_KERNEL,
    "kernels._internals.hf_hub": _DropPrefix(BNB_KERNEL_TRUST_PREFIX),
}


def quiet() -> None:
    """Install the filters (idempotent; before the sources are imported: ``zoo/__init__.py``)."""
    for name, drop in FILTERS.items():
        logger = logging.getLogger(name)
        if drop not in logger.filters:
            logger.addFilter(drop)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
