"""The lm-evaluation-harness bridge (the optional extra ``ftzoo[eval]``).

* :mod:`zoo.harness.model`: :class:`~zoo.harness.model.FtzooLM`, lm-eval's model ``ftzoo``
  (a base model with ftzoo adapters switched in place); importing it needs ``lm_eval``;
* :mod:`zoo.harness.tasks`: offline task definitions for the LLM-Adapters test sets
  (``llm_adapters_arc_easy``, ...), to give lm-eval as ``include_path`` (:data:`TASKS_DIR`).

``python -m tools.harness`` runs lm-eval tasks over a base model and its adapters in one process.
"""

from zoo.harness.tasks import TASKS_DIR

__all__ = ["TASKS_DIR"]
