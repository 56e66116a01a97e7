"""Prometheus metrics (``GET /metrics``), in the registry of one server.

Read at scrape time from the state the decoding loop publishes (never waiting for a step):

* ``ftzoo_requests_running`` / ``ftzoo_requests_waiting``: requests in the batch and waiting
  for a place, per ``model`` (an adapter or the base);
* ``ftzoo_requests_finished_total``, ``ftzoo_requests_cancelled_total`` (their clients left or
  timed out), ``ftzoo_generation_tokens_total``, ``ftzoo_decoding_steps_total``,
  ``ftzoo_decoding_loop_cpu_seconds_total``, ``ftzoo_prefix_cache_reused_tokens_total`` (prompt
  tokens taken from the prefix cache instead of prefilled);
* ``ftzoo_adapters_in_memory``, ``ftzoo_batch_size_limit``.

Observed by the loop as it decodes:

* ``ftzoo_time_to_first_token_seconds``: from the request's arrival at the loop to its first token;
* ``ftzoo_time_per_output_token_seconds``: between a request's successive tokens;
* ``ftzoo_batch_rows``: rows of the batch at each decoding step (its occupancy).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from zoo.server.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The histograms the loop observes, and the registry ``/metrics`` renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.time_to_first_token = Histogram(
            "ftzoo_time_to_first_token_seconds",
            "Seconds from a request's arrival at the decoding loop to its first token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_token = Histogram(
            "ftzoo_time_per_output_token_seconds",
            "Seconds between a request's successive tokens",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "ftzoo_batch_rows", "Rows of the batch at each decoding step", buckets=ROW_BUCKETS, registry=self.registry
        )

    def watch(self, engine: Engine) -> None:
        """Report ``engine``'s published state at every scrape."""
        self.registry.register(_LoopState(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LoopState(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        state = self.engine.state
        for name, counts, what in (
            ("running", state.running_by_adapter, "Requests in the batch"),
            ("waiting", state.waiting_by_adapter, "Requests waiting for a place in the batch"),
        ):
            gauge = GaugeMetricFamily(f"ftzoo_requests_{name}", f"{what}, per model", labels=["model"])
            for model, count in sorted(counts.items()):
                gauge.add_metric([model], count)
            yield gauge
        for name, value, what in (
            ("requests_finished", state.finished, "Requests answered to the end"),
            ("requests_cancelled", state.cancelled, "Requests cancelled (their clients left or timed out)"),
            ("generation_tokens", state.generated_tokens, "Tokens generated"),
            ("decoding_steps", state.steps, "Decoding steps run"),
            ("decoding_loop_cpu_seconds", state.cpu_seconds, "CPU seconds of the decoding loop's thread"),
            ("prefix_cache_reused_tokens", state.prefix_cache_reused_tokens, "Prompt tokens taken from the prefix cache"),
        ):
            yield CounterMetricFamily(f"ftzoo_{name}", what, value=value)
        yield GaugeMetricFamily("ftzoo_adapters_in_memory", "Adapters held in memory", value=state.adapters_in_memory)
        yield GaugeMetricFamily(
            "ftzoo_batch_size_limit", "Requests decoded together at most", value=self.engine.config.batch_size
        )
