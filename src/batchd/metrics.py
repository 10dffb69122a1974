"""Prometheus metrics: one registry per app, handed to whoever records into it.

The engine and the backends record what happens as it happens (in flight, limits,
latency, retries, errors, tokens, batches created and ended); figures that live in the
database (requests by state, queue depth) are read by a collector when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batchd.domain import BatchDialect

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.in_flight = Gauge(
            "batchd_backend_in_flight", "Requests in flight to a backend", ["backend"], registry=r
        )
        self.concurrency_limit = Gauge(
            "batchd_backend_concurrency_limit",
            "Current concurrency limit of a backend (adaptive)",
            ["backend"],
            registry=r,
        )
        self.limit_source = Gauge(
            "batchd_backend_limit_source",
            "1 for the signal that set a backend's current concurrency limit (slow_start, "
            "growth, congestion, latency, configured), 0 for the others",
            ["backend", "source"],
            registry=r,
        )
        self.fleet_slots = Gauge(
            "batchd_backend_fleet_slots",
            "Slots of a backend's fleet_max_concurrency this process holds (PostgreSQL)",
            ["backend"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "batchd_backend_budget_remaining",
            "What an upstream's rate-limit headers last said is left of its budget",
            ["backend", "budget"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "batchd_upstream_latency_seconds",
            "Time of one upstream call, failed or not",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "batchd_upstream_retries",
            "Upstream calls retried, by the error that caused the retry",
            ["backend", "error_type"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "batchd_upstream_errors",
            "Failed upstream calls, by error type",
            ["backend", "error_type"],
            registry=r,
        )
        self.tokens = Counter(
            "batchd_tokens",
            "Tokens reported by upstreams",
            ["backend", "direction"],
            registry=r,
        )
        self.requests_finished = Counter(
            "batchd_requests_finished",
            "Batch requests that reached a final state in the engine, by the API their batch "
            "was created through (dialect: anthropic, openai)",
            ["backend", "state", "dialect"],
            registry=r,
        )
        self.answers_reused = Counter(
            "batchd_answers_reused",
            "Batch requests answered from a stored answer without an upstream call "
            "(reuse_answers), by the API their batch was created through; per batch in "
            "`batchd batches show` and the console",
            ["backend", "dialect"],
            registry=r,
        )
        self.batches_created = Counter(
            "batchd_batches_created",
            "Batches accepted, by the API they were created through",
            ["dialect"],
            registry=r,
        )
        self.batches_ended = Counter(
            "batchd_batches_ended",
            "Batches that reached processing_status ended, by the API they were created through",
            ["dialect"],
            registry=r,
        )
        for dialect in BatchDialect:  # both faces' series exist from the start, at 0
            self.batches_created.labels(dialect)
            self.batches_ended.labels(dialect)

    def count_ended(self, dialects: Iterable[BatchDialect]) -> None:
        """Count the batches that ended, one dialect each."""
        for dialect in dialects:
            self.batches_ended.labels(dialect).inc()
