"""Where a mixed-adapter decoding step's time goes: one ``rows``-row batch decoding on the base alone,
on the adapters of each method alone, and on all of them (DoRA also as the dense delta the core
default would build, for comparison).

``python -m tools.bench.mixed_step`` builds ``adapters`` adapters of the HTTP load test's methods in
turn (:func:`tools.bench.serve_http.make_adapters`: S²FT, LoRA, DoRA, sparse), serves them from one
:class:`zoo.inference.MixedAdapterModel`, and for each setting keeps a
:class:`zoo.inference.ContinuousBatcher` of ``rows`` requests decoding (EOS ignored; rows spread
evenly over the setting's adapters). Each round, each setting decodes one step (its plans and
stacked factors are built) and then ``steps`` timed steps, as a server decodes one batch for many
steps; printed: the median and the fastest step per setting over ``rounds`` rounds.

``--sparse_one_by_one true`` adds the sparse settings once more with the sparse adapters' deltas
applied one adapter at a time (:data:`zoo.inference.mixed.SPARSE_BATCH_WIDTH` set to 0 during
their steps, as before :class:`zoo.inference.mixed.SparsePlan`), in the same rounds, so the two
can be compared within one run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch

from tools.bench.serve_http import METHODS, PROMPTS, adapter_server
from zoo.inference import (
    ContinuousBatcher,
    GenerationRequest,
    hooks_for,
    mixed,
    prompt_ids,
)
from zoo.serving import serving_modules


def mixed_step(
    base_model: str = "smollm2-135m",
    adapters: int = 16,
    rows: int = 64,
    steps: int = 4,
    rounds: int = 3,
    lora_rank: int = 32,
    threads: int = 1,
    sparse_one_by_one: bool = False,
) -> dict[str, float]:
    """Measure (see the module docstring); return the median step in seconds per setting."""
    torch.set_num_threads(threads)
    server, tokenizer, read = adapter_server(base_model, adapters, lora_rank)
    model = server.model
    for name, adapter in read.items():
        if adapter.method == "dora":  # the core default's dense delta, beside
            dense = serving_modules(hooks_for(adapter).ftzoo_adapter_deltas(adapter=adapter, model=model), model)
            server.add_adapter(f"{name}-dense", adapter, {k: d.eval() for k, d in dense.items()})
    names = list(read)
    settings = {"base": [None], **{m: [n for n in names if n.startswith(f"{m}-")] for m in METHODS}}
    settings["dora, dense deltas"] = [f"{n}-dense" for n in settings["dora"]]
    settings[f"all {adapters}"] = names
    settings[f"all {adapters}, DoRA dense"] = [f"{n}-dense" if n.startswith("dora-") else n for n in names]
    one_by_one = {"sparse, one by one": "sparse", f"all {adapters}, sparse one by one": f"all {adapters}"}
    if sparse_one_by_one:
        settings |= {setting: settings[same] for setting, same in one_by_one.items()}
    ids = prompt_ids(tokenizer, PROMPTS[:1], "chat")[0]
    batchers = {}
    for setting, assigned in settings.items():
        batcher = ContinuousBatcher(server, tokenizer, rows)
        batcher.eos = set()  # the rows decode on
        for i in range(rows):
            batcher.submit(i, GenerationRequest(ids, assigned[i % len(assigned)], 10 * steps * rounds + 10))
        while batcher.waiting or batcher.prefilling:
            batcher.step()
        batchers[setting] = batcher
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    for _ in range(rounds):
        for setting, batcher in batchers.items():
            with _sparse_batched(setting not in one_by_one):
                batcher.step()
                for _ in range(steps):
                    start = time.perf_counter()
                    batcher.step()
                    times[setting].append(time.perf_counter() - start)
    base = statistics.median(times["base"])
    for setting, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{setting:28s} {median * 1000:6.0f} ms (fastest {min(seconds) * 1000:.0f}), {median / base:.2f}× the base")
    return {setting: statistics.median(seconds) for setting, seconds in times.items()}


@contextlib.contextmanager
def _sparse_batched(batched: bool) -> Iterator[None]:
    """Within the block, sparse deltas run batched (as served) or one adapter at a time."""
    width = mixed.SPARSE_BATCH_WIDTH
    mixed.SPARSE_BATCH_WIDTH = width if batched else 0
    try:
        yield
    finally:
        mixed.SPARSE_BATCH_WIDTH = width


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(mixed_step, as_positional=False)
