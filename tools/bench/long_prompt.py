"""One long prompt arriving among running streams: how long each decoding step takes while it is
prefilled, and how much KV cache the batcher holds.

``python -m tools.bench.long_prompt --chunks '[0, 64, 256]' --shares '[1.5, 2]'`` (chunk 0: no
chunking; a share: chunks sized to that share of a decoding step's time, at most 256 tokens, as
the server's ``--prefill_share`` does): for each setting, ``streams`` requests decode (EOS ignored,
so they run on), then a ``prompt_tokens``-token prompt arrives; printed per setting: the median
decoding step before it arrives; the steps until it has joined the batch and their median and
longest time; the delay of every stream per step, in decoding steps (each step's prefill time
over its own decoding time, so that other load on the machine, which slows both, cancels out):
median, longest, and the share of steps over 2; the time until the long prompt's first token;
the requests running beside it; and the peak of
:meth:`zoo.inference.ContinuousBatcher.cache_columns` against ``kv_cache_gb``.
"""

from __future__ import annotations

import statistics
import time

import torch

from zoo.inference import ContinuousBatcher, GenerationRequest, prompt_ids
from zoo.inference.kv_cache import bytes_per_token
from zoo.loading import load_model, load_tokenizer


def long_prompt(
    base_model: str = "smollm2-135m",
    chunks: list[int] | None = None,
    shares: list[float] | None = None,
    share_cap: int = 256,
    groups: int = 2,
    streams: int = 32,
    stream_tokens: int = 400,
    prompt_tokens: int = 4000,
    kv_cache_gb: float = 1.0,
    threads: int = 1,
) -> list[dict[str, float]]:
    """Measure (see the module docstring); return one dict per setting (``chunk``, ``share``).

    ``stream_tokens``: each stream's ``max_new_tokens`` (the KV budget holds every stream at that
    length beside the long prompt: 32 × 430 + 4,016 tokens of SmolLM2's 46 KB each is 0.8 GiB)."""
    torch.set_num_threads(threads)
    model, tokenizer = load_model(base_model).eval(), load_tokenizer(base_model)
    short = prompt_ids(tokenizer, ["Write one sentence about the sea."], "chat")[0]
    long = tokenizer("The quick brown fox jumps over the lazy dog. " * (prompt_tokens // 8))["input_ids"][:prompt_tokens]
    per_token = bytes_per_token(model.config, torch.float32)
    budget = int(kv_cache_gb * 2**30) // per_token
    results = []
    settings = [(chunk, None) for chunk in (chunks if chunks is not None else [0, 256])]
    settings += [(share_cap, share) for share in (shares if shares is not None else [1.25])]
    for chunk, share in settings:
        batcher = ContinuousBatcher(
            model,
            tokenizer,
            2 * streams,
            max_batch_tokens=budget,
            prefill_chunk=chunk or None,
            max_groups=groups,
            prefill_share=share,
        )
        batcher.eos = set()  # the streams run on (a chat model would end its sentence)
        for i in range(streams):
            batcher.submit(i, GenerationRequest(short, None, stream_tokens))
        while batcher.prefilling or batcher.waiting or len(batcher.rows) < streams:
            batcher.step()
        for _ in range(4):
            batcher.step()  # warm up
        plain = [_timed(batcher.step) for _ in range(8)]
        batcher.submit("long", GenerationRequest(long, None, 16))
        during, peak, chunk_tokens, delays = [], 0, [], []
        while not any(row.uid == "long" for row in batcher.rows) and len(during) < 10 * prompt_tokens:
            during.append(_timed(batcher.step))
            chunk_tokens.append(batcher.prefilled_last_step)
            decoding, prefilling = batcher.step_seconds
            delays.append(prefilling / decoding)  # in the step's own decoding time: other load falls on both
            peak = max(peak, batcher.cache_columns())
        decode = statistics.median(plain)
        result = {
            "chunk": chunk,
            "share": share,
            "decode_step_s": decode,
            "steps_to_join": len(during),
            "step_while_prefilling_median_s": statistics.median(during),
            "step_while_prefilling_max_s": max(during),
            "delay_steps_median": statistics.median(delays),
            "delay_steps_max": max(delays),
            "steps_over_2": sum(d > 2 for d in delays) / len(delays),
            "chunk_tokens_min": min(chunk_tokens),
            "chunk_tokens_max": max(chunk_tokens),
            "first_token_s": sum(during),
            "running_beside": len(batcher.rows) - 1,
            "kv_peak_gib": peak * per_token / 2**30,
            "kv_budget_gib": kv_cache_gb,
        }
        name = f"share {share:g} (chunks of at most {chunk})" if share else f"chunk {chunk or 'none'}"
        print(
            f"{name}: decode step {result['decode_step_s'] * 1000:.0f} ms; {len(during)} steps until "
            f"the long prompt joined, median {result['step_while_prefilling_median_s'] * 1000:.0f} ms, longest "
            f"{result['step_while_prefilling_max_s'] * 1000:.0f} ms; chunks of {min(chunk_tokens)}-{max(chunk_tokens)} "
            f"tokens; delay per step {result['delay_steps_median']:.2f} decode steps median, "
            f"{result['delay_steps_max']:.2f} longest, {result['steps_over_2']:.0%} of steps over 2; first token "
            f"after {result['first_token_s']:.1f} s; {result['running_beside']} streams beside it; "
            f"KV cache peak {result['kv_peak_gib']:.3f} GiB of {kv_cache_gb:g}",
            flush=True,
        )
        results.append(result)
    return results


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(long_prompt, as_positional=False)
