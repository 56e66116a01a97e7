"""lm-eval's own command line with ftzoo's model registered (``--model ftzoo``)::

    python -m zoo.harness run --model ftzoo --model_args adapter=runs/s2ft/adapter --device cpu \\
        --tasks llm_adapters_arc_easy --include_path zoo/harness/tasks \\
        --metadata '{"data_dir": "../shared/data/reasoning"}' --output_path runs/lm_eval --log_samples

(``lm_eval`` itself cannot find the model: lm-eval has no plugin discovery for models.)
"""

from lm_eval.__main__ import cli_evaluate

import zoo.harness.model  # noqa: F401  (registers the model "ftzoo" with lm-eval)

if __name__ == "__main__":
    cli_evaluate()
