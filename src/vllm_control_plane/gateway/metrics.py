"""Prometheus ``/metrics`` for the gateway, on its own registry (never the global one).

Two kinds of series:

* per-request series the gateway records when a response ends (counts by model, priority and
  status; TTFT, TPOT, end-to-end and queue-time histograms; SLO violations; cost; retries;
  rejections by reason) — label children are cached so the hot path does a dict lookup and an
  ``inc``/``observe`` per series;
* fleet gauges read from the manager at scrape time by a custom collector (queue depth by
  priority, per-instance health, availability, load, in-flight and the engine's scraped queues),
  so they are never stale and cost nothing between scrapes.

Names follow Prometheus conventions: ``vcp_`` prefix, base units (seconds, USD), ``_total`` on
counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from vllm_control_plane.runtime.handles import RequestResult
from vllm_control_plane.types import ExecutionInstance, RequestStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)


class GatewayMetrics:
    """The gateway's Prometheus series; :meth:`observe` is called once per finished request."""

    def __init__(self, status_source: Callable[[], dict[str, Any]],
                 instances_source: Callable[[], list[ExecutionInstance]]) -> None:  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vcp_requests", "Requests by model, priority and final status.",
                                ["model", "priority", "status"], registry=r)  # fmt: skip
        self.ttft = Histogram("vcp_time_to_first_token_seconds", "Submit to first token.",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("vcp_time_per_output_token_seconds",
                              "(E2E - TTFT) / (output tokens - 1).", ["model"],
                              buckets=_TPOT_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("vcp_e2e_request_latency_seconds", "Submit to last token.",
                             ["model"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue = Histogram("vcp_request_queue_time_seconds",
                               "Time in the control plane's queue before dispatch.", ["model"],
                               buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.slo_violations = Counter("vcp_slo_violations",
                                      "Requests that carried an SLO and missed it.",
                                      ["model", "priority"], registry=r)  # fmt: skip
        self.cost = Counter("vcp_cost_usd", "Cost of served requests in USD.", ["model"],
                            registry=r)  # fmt: skip
        self.retries = Counter("vcp_retries", "Re-dispatches after a failure before the first "
                               "token.", ["model"], registry=r)  # fmt: skip
        self.rejections = Counter("vcp_rejections", "Requests refused, by reason (error code).",
                                  ["reason"], registry=r)  # fmt: skip
        self.tokens = Counter("vcp_tokens", "Prompt and generated tokens of completed requests.",
                              ["model", "kind"], registry=r)  # fmt: skip
        r.register(_FleetCollector(status_source, instances_source))
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, result: RequestResult, model: str, priority: str) -> None:
        """Record one request that reached a terminal state."""
        status = result.status
        self._child(self.requests, model, priority, status.value).inc()
        if result.retries:
            self._child(self.retries, model).inc(result.retries)
        if result.slo_met is False:
            self._child(self.slo_violations, model, priority).inc()
        if status is not RequestStatus.COMPLETED:
            return
        if result.ttft_ms is not None:
            self._child(self.ttft, model).observe(result.ttft_ms / 1e3)
        if result.tpot_ms is not None:
            self._child(self.tpot, model).observe(result.tpot_ms / 1e3)
        if result.latency_ms is not None:
            self._child(self.e2e, model).observe(result.latency_ms / 1e3)
        if result.queue_time_ms is not None:
            self._child(self.queue, model).observe(result.queue_time_ms / 1e3)
        if result.cost_usd:
            self._child(self.cost, model).inc(result.cost_usd)
        self._child(self.tokens, model, "prompt").inc(result.prompt_tokens)
        self._child(self.tokens, model, "completion").inc(result.completion_tokens)

    def rejected(self, reason: str) -> None:
        """A request refused before or by the control plane (``reason``: the error code)."""
        self._child(self.rejections, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FleetCollector(Collector):
    """Gauges read from the manager at scrape time."""

    def __init__(self, status: Callable[[], dict[str, Any]],
                 instances: Callable[[], list[ExecutionInstance]]) -> None:  # fmt: skip
        self._status = status
        self._instances = instances

    def describe(self) -> list[Any]:
        return []  # no fixed set: families are built per scrape

    def collect(self) -> Iterator[Any]:
        status = self._status()
        yield from self._queue_and_policy(status)
        yield from self._instance_families(self._instances())

    @staticmethod
    def _queue_and_policy(status: dict[str, Any]) -> Iterator[Any]:
        depth = GaugeMetricFamily("vcp_queue_depth", "Requests queued in the control plane.",
                                  labels=["priority"])  # fmt: skip
        for prio, n in (status.get("queue_depth_by_priority") or {}).items():
            depth.add_metric([str(prio)], float(n))
        yield depth
        counters = status.get("counters") or {}
        in_flight = GaugeMetricFamily("vcp_in_flight_requests",
                                      "Requests submitted and not yet finished (queued or "
                                      "running).")  # fmt: skip
        in_flight.add_metric([], float(counters.get("in_flight", 0)))
        yield in_flight
        info = InfoMetricFamily("vcp_scheduling", "Active scheduling policy and routing strategy.")
        info.add_metric([], {
            "policy": str(status.get("scheduling_policy", "")),
            "active_policy": str(status.get("active_policy", "")),
            "strategy": str(status.get("routing_strategy", "")),
        })  # fmt: skip
        yield info

    @staticmethod
    def _instance_families(instances: list[ExecutionInstance]) -> Iterator[Any]:
        specs: list[tuple[str, str, Callable[[ExecutionInstance], float]]] = [
            ("vcp_instance_healthy", "1 when the instance passes health checks.",
             lambda i: float(i.is_healthy)),
            ("vcp_instance_available", "1 when the instance takes new requests (not draining).",
             lambda i: float(i.is_available)),
            ("vcp_instance_load", "Dispatched requests / max_concurrent_requests (0..1).",
             lambda i: i.current_load),
            ("vcp_instance_in_flight", "Requests dispatched to the instance and not finished.",
             lambda i: float(i.active_requests)),
            ("vcp_instance_engine_running", "The engine's own running queue (scraped).",
             lambda i: float(i.num_requests_running)),
            ("vcp_instance_engine_waiting", "The engine's own waiting queue (scraped).",
             lambda i: float(i.num_requests_waiting)),
            ("vcp_instance_kv_cache_usage", "The engine's KV-cache usage, 0..1 (scraped).",
             lambda i: float(i.kv_cache_usage)),
        ]  # fmt: skip
        for name, doc, value in specs:
            family = GaugeMetricFamily(name, doc, labels=["instance", "model"])
            for inst in instances:
                family.add_metric([inst.instance_id, inst.model_name], value(inst))
            yield family
