"""Prometheus ``/metrics`` for one simulated server, with vLLM's names, labels and buckets.

How it works: every server owns a private ``CollectorRegistry`` (several servers in one process
must not share series). Engine gauges and counters are not pushed on every step: a collector reads
``engine.stats()`` when scraped, so they are exact and cost nothing between scrapes. Latency
histograms are observed by the HTTP layer as requests progress, in *model* seconds (wall time
divided by the time scale), so they describe the modelled hardware rather than this process; they
are plain counters behind a collector, because inter-token latency is observed per token.

Names follow vLLM v1 (``vllm/v1/metrics/loggers.py``): labels ``model_name`` and ``engine``
("0"), and the same bucket boundaries. ``legacy=True`` serves the pre-0.10 names instead:
``vllm:gpu_cache_usage_perc``, ``vllm:gpu_prefix_cache_{queries,hits}_total`` and
``vllm:time_per_output_token_seconds``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vllm_control_plane.sim.types import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("model_name", "engine")
FINISH_REASONS = ("stop", "length", "abort")

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

__all__ = ["CONTENT_TYPE", "LatencyHistogram", "SimMetrics"]


class _EngineCollector(Collector):
    """Gauges and counters read from the engine's stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str, legacy: bool) -> None:
        self._stats = stats
        self._labels = [model_name, "0"]
        self._legacy = legacy

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution "
                          "batches.", s.num_requests_running)  # fmt: skip
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be "
                          "processed.", s.num_requests_waiting)  # fmt: skip
        prefix = "vllm:gpu_" if self._legacy else "vllm:"
        cache_name = "vllm:gpu_cache_usage_perc" if self._legacy else "vllm:kv_cache_usage_perc"
        yield self._gauge(cache_name, "KV-cache usage. 1 means 100 percent usage.",
                          s.kv_cache_usage_perc)  # fmt: skip
        yield self._counter(f"{prefix}prefix_cache_queries", "Prefix cache queries, in terms of "
                            "number of queried tokens.", s.prefix_cache_queries)  # fmt: skip
        yield self._counter(f"{prefix}prefix_cache_hits", "Prefix cache hits, in terms of number "
                            "of cached tokens.", s.prefix_cache_hits)  # fmt: skip
        yield self._counter("vllm:num_preemptions", "Cumulative number of preemption from the "
                            "engine.", s.num_preemptions)  # fmt: skip
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                            s.prompt_tokens)  # fmt: skip
        yield self._counter("vllm:generation_tokens", "Number of generation tokens processed.",
                            s.generation_tokens)  # fmt: skip
        yield self._success(s.request_success)

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=LABELS)
        g.add_metric(self._labels, value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=LABELS)
        c.add_metric(self._labels, value)
        return c

    def _success(self, by_reason: dict[str, int]) -> CounterMetricFamily:
        c = CounterMetricFamily("vllm:request_success", "Count of successfully processed "
                                "requests.", labels=[*LABELS, "finished_reason"])  # fmt: skip
        reasons = dict.fromkeys(FINISH_REASONS, 0) | by_reason
        for reason, count in reasons.items():
            c.add_metric([*self._labels, reason], count)
        return c


class LatencyHistogram:
    """A single-series histogram, cheaper to observe than ``prometheus_client.Histogram``.

    Observed once per generated token per request (inter-token latency), so it must cost little:
    one ``bisect`` and two additions, no lock (the asyncio loop is single-threaded).
    """

    __slots__ = ("bounds", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.bounds = name, doc, bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def family(self, labels: list[str]) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            cumulative.append((floatToGoString(bound), running))
        h = HistogramMetricFamily(self.name, self.doc, labels=LABELS)
        h.add_metric(labels, cumulative, self.sum)
        return h


class _HistogramCollector(Collector):
    def __init__(self, histograms: list[LatencyHistogram], model_name: str) -> None:
        self._histograms = histograms
        self._labels = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        for h in self._histograms:
            yield h.family(self._labels)


class SimMetrics:
    """The metrics of one simulated server (its own registry)."""

    def __init__(
        self, stats: Callable[[], EngineStats], model_name: str, legacy: bool = False
    ) -> None:
        if legacy:
            itl_name = "vllm:time_per_output_token_seconds"
            itl_doc = "Histogram of time per output token in seconds."
        else:
            itl_name = "vllm:inter_token_latency_seconds"
            itl_doc = "Histogram of inter-token latency in seconds."
        self.ttft = LatencyHistogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = LatencyHistogram(itl_name, itl_doc, ITL_BUCKETS)
        self.e2e = LatencyHistogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = LatencyHistogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        # vLLM's phase histograms: scheduled -> first token, first -> last token, scheduled ->
        # last token. A client can tell the engine's share of a TTFT from the front end's.
        self.prefill_time = LatencyHistogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = LatencyHistogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = LatencyHistogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(stats, model_name, legacy))
        hists = [self.ttft, self.itl, self.e2e, self.queue_time, self.prefill_time,
                 self.decode_time, self.inference_time]  # fmt: skip
        self.registry.register(_HistogramCollector(hists, model_name))

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)
