"""Benchmarks of training (memory, step time) and serving (switch latency, mixed batches).

Every method is measured through its plugin, prepared by :func:`zoo.prepare.prepare`
exactly as ``lightning fit`` prepares it (ftzoo's LoRA is the ``lora`` row); raw ``peft``
is a peer row (``peft_lora``), not the LoRA of record. The model shapes and the targets
both benchmarks report against are in :mod:`tools.bench.shapes`::

    python -m tools.bench.train --docs docs/benchmarks.md
    python -m tools.bench.serve --output bench_results/serve.json --docs docs/benchmarks.md
"""
