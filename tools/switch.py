"""Load a base model once and switch among adapters in place, answering a prompt after each.

A thin command line over :class:`zoo.inference.AdapterSwitcher` (unfuse the active adapter,
fuse the next; after any sequence of switches the weights are the base plus the active
adapter, as a fresh fuse would make them)::

    python tools/switch.py --adapters '[math=runs/math/adapter, code=runs/code/adapter]' \\
        --prompt 'What is 12*7?' --rounds 3
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Literal

from zoo.adapter import AdapterError
from zoo.cli import one_line_errors
from zoo.inference import (
    BASE,
    AdapterSwitcher,
    adapter_system_prompt,
    adapter_template,
    greedy_answers,
    load_base,
    parse_named,
    pick_device,
    prompt_ids,
    read_adapter,
)
from zoo.loading import load_tokenizer
from zoo.outputs import atomic_file


def switch(
    adapters: list[str],
    prompt: str = "Write one sentence about the sea.",
    sequence: list[str] | None = None,
    rounds: int = 2,
    max_new_tokens: int = 16,
    chat: bool = False,
    prompt_style: Literal["adapter", "plain", "chat", "alpaca"] = "adapter",
    base_model: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "auto",
    output: str | None = None,
) -> dict[str, Any]:
    """Switch among adapters on one base model; answer ``prompt`` after each switch.

    Args:
        adapters: adapter folders, as ``path`` or ``name=path``.
        prompt: the prompt answered after every switch.
        sequence: adapter names in the order to switch to (``base`` = none); default:
            every adapter in turn, ``rounds`` times.
        rounds: passes over the adapters when no ``sequence`` is given.
        max_new_tokens: length of each greedy answer.
        chat: wrap the prompt in the tokenizer's chat template (``--prompt_style chat``).
        prompt_style: ``adapter``: after each switch, the prompt in the template that adapter
            was trained with (``plain`` for the base and adapters that record none);
            ``plain``, ``chat`` or ``alpaca``: always that template.
        base_model: the base model; default: the one the adapters record.
        dtype: dtype of the base weights.
        device: ``auto``, ``cpu``, ``cuda``, ...
        output: write the report here as JSON.

    Returns:
        ``{"switches": [{"to", "seconds", "answer"}], "latency_ms": {name: {"mean", "median"}}}``.
    """
    paths = parse_named(adapters)
    loaded = {name: read_adapter(path) for name, path in paths.items()}
    model, info = load_base(base_model, loaded, dtype)
    model.to(pick_device(device))
    tokenizer = load_tokenizer(info.name_or_path)
    switcher = AdapterSwitcher(model, info)
    for name, adapter in loaded.items():
        switcher.add(name, adapter)
    order = sequence if sequence is not None else [name for _ in range(rounds) for name in loaded]
    unknown = sorted({n for n in order if n != BASE and n not in loaded})
    if unknown:
        raise AdapterError(f"sequence names unknown adapters {unknown} (known: {sorted(loaded)})")

    style = "chat" if chat else prompt_style
    switches = []
    for name in order:
        seconds = switcher.activate(name)
        template = style if style != "adapter" else adapter_template(loaded.get(name))
        system = adapter_system_prompt(loaded.get(name)) if style == "adapter" else None
        answer = greedy_answers(model, tokenizer, prompt_ids(tokenizer, [prompt], template, [system]), max_new_tokens)[0]
        switches.append({"to": name, "seconds": seconds, "answer": answer})
        print(f"{name:<20} {seconds * 1e3:9.2f} ms  {answer!r}")
    report = {"base_model": info.name_or_path, "switches": switches, "latency_ms": latency_summary(switches)}
    if output:
        with atomic_file(output) as handle:
            json.dump(report, handle, indent=2)
    return report


def latency_summary(switches: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and median switch time per target adapter, in milliseconds."""
    per: dict[str, list[float]] = {}
    for s in switches:
        per.setdefault(s["to"], []).append(s["seconds"] * 1e3)
    return {name: {"mean": statistics.fmean(v), "median": statistics.median(v)} for name, v in per.items()}


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    with one_line_errors():
        CLI(switch, as_positional=False, args=args)


if __name__ == "__main__":
    main()
