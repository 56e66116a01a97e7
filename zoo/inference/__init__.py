"""The adapter runtime for inference: one base model in memory, adapters applied to it.

* :mod:`zoo.inference.adapters`: read adapters, load their base, check and fuse them;
* :mod:`zoo.inference.switch`: switch among adapters in place (fuse / unfuse);
* :mod:`zoo.inference.mixed`: many adapters in one batch, unfused;
* :mod:`zoo.inference.batching`: continuous batching on top of it (or of a plain model):
  requests join and leave the running batch between decoding steps
  (:mod:`~zoo.inference.kv_cache`, :mod:`~zoo.inference.sampling`, :mod:`~zoo.inference.text`);
* :mod:`zoo.inference.greedy`: greedy answers to a list of prompts through that batcher, the
  one generation path of ``lightning validate/test/predict``, ``tools.evaluate``,
  ``tools.switch`` and (the batcher itself) the server;
* :mod:`zoo.inference.generate`: prompts in the template an adapter was trained with, tokenized;
* :mod:`zoo.inference.export`: a plain Hugging Face folder of a fused model.

The tools in ``tools/`` are thin command lines over these.
"""

from zoo.inference.adapters import checked_deltas, fuse_into, hooks_for, load_base, parse_named, read_adapter
from zoo.inference.batching import Completion, ContinuousBatcher, GenerationRequest, TokenLogprob, Update, complete
from zoo.inference.export import save_model_folder
from zoo.inference.generate import (
    Template,
    adapter_system_prompt,
    adapter_template,
    encode_prompts,
    pick_device,
    prompt_ids,
    prompt_info,
    synchronize,
)
from zoo.inference.greedy import greedy_answers
from zoo.inference.mixed import MixedAdapterModel
from zoo.inference.sampling import Sampling
from zoo.inference.switch import BASE, AdapterSwitcher

__all__ = [
    "BASE",
    "AdapterSwitcher",
    "Completion",
    "ContinuousBatcher",
    "GenerationRequest",
    "MixedAdapterModel",
    "Sampling",
    "Template",
    "TokenLogprob",
    "Update",
    "adapter_system_prompt",
    "adapter_template",
    "checked_deltas",
    "complete",
    "encode_prompts",
    "fuse_into",
    "greedy_answers",
    "hooks_for",
    "load_base",
    "parse_named",
    "pick_device",
    "prompt_ids",
    "prompt_info",
    "read_adapter",
    "save_model_folder",
    "synchronize",
]
