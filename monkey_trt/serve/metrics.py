"""Prometheus metrics of one service (own registry: several apps may live in one process)."""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ProcessCounters:
    """Counts kept below the app (the HTTP protocol, the log filter): one set per process, read by every
    service's /metrics."""

    REFUSALS = ("connection_cap", "header_timeout", "malformed", "write_timeout")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def collect(self):
        refused = CounterMetricFamily("monkey_http_refused", "Connections or requests refused before the app, by reason",
                                      labels=["reason"])
        for reason in self.REFUSALS:
            refused.add_metric([reason], self.get(reason))
        yield refused
        dropped = CounterMetricFamily("monkey_log_lines_dropped", "Log lines dropped by the rate limit (repeats of one message)")
        dropped.add_metric([], self.get("log_lines_dropped"))
        yield dropped


PROCESS = ProcessCounters()


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("monkey_requests", "HTTP requests to /v1/generate and /v1/generate/stream by status code (a stream: by how it ended)", ["status"], registry=r)
        self.latency = Histogram("monkey_request_seconds", "End-to-end /v1/generate latency (200s)", buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("monkey_stage_seconds", "Time per MONKEY stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("monkey_queue_depth", "Inference jobs accepted and not finished (queued + running)", registry=r)
        self.cache_hits = Counter("monkey_cache_hits", "Encoder cache hits", ["cache"], registry=r)
        self.cache_misses = Counter("monkey_cache_misses", "Encoder cache misses", ["cache"], registry=r)
        for cache in ("subject", "prompt"):  # present from the start, at 0
            self.cache_hits.labels(cache)
            self.cache_misses.labels(cache)
        r.register(PROCESS)

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage.labels(stage).observe(seconds)

    def count_cache(self, cache: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(cache).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
