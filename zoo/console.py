"""A quiet console: what ftzoo's users cannot act on is not printed; warnings that matter are.

Silenced, each by its exact message (nothing else from these sources is):

* Lightning's advertising tips (``💡 Tip: ... litlogger`` / ``litmodels``), logged through
  ``lightning.pytorch.utilities.rank_zero`` at every ``fit``;
* the ``isinstance(treespec, LeafSpec)`` deprecation warning that Lightning's own pytree
  helper triggers in recent torch (Lightning's code, not the user's);
* the progress bars of loading a base model (transformers' "Loading weights" and the GGUF
  de-quantization bar) are switched off for the load (:func:`zoo.loading.load_model`).
"""

from __future__ import annotations

import logging
import warnings

TIP_PREFIX = "💡 Tip:"
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_PREFIX)


_TIPS = _DropTips()


def quiet() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
