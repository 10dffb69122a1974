"""Figures held in the database, exposed as Prometheus metrics when /metrics is scraped.

The engine's own metrics live in ``batchd.metrics.Metrics.registry`` and move as things
happen; these are read from the store at scrape time and rendered after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from batchd.store import RequestFigures


class FiguresCollector(Collector):
    """Yields one scrape's figures; built anew for each scrape."""

    def __init__(self, figures: RequestFigures, backends: Iterable[str] = ()) -> None:
        self._figures = figures
        self._backends = backends

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        by_state = GaugeMetricFamily(
            "batchd_requests", "Stored batch requests by state", labels=["state"]
        )
        for state, count in sorted(self._figures.by_state.items()):
            by_state.add_metric([state.value], count)
        yield by_state
        depth = GaugeMetricFamily(
            "batchd_queue_depth", "Queued requests waiting for a backend", labels=["backend"]
        )
        queued = dict.fromkeys(self._backends, 0) | self._figures.queued_by_backend
        for backend, count in sorted(queued.items()):
            depth.add_metric([backend], count)
        yield depth
        yield GaugeMetricFamily(
            "batchd_batches_at_risk",
            "Unfinished batches that will miss their deadline at the rate they have run so far",
            value=self._figures.at_risk,
        )
        if self._figures.fleet_slots:
            fleet = GaugeMetricFamily(
                "batchd_fleet_slots_held",
                "Slots of a backend's fleet_max_concurrency held by every process together "
                "(live leases in the database)",
                labels=["backend"],
            )
            for backend, slots in sorted(self._figures.fleet_slots.items()):
                fleet.add_metric([backend], slots)
            yield fleet
        tokens = CounterMetricFamily(
            "batchd_workspace_tokens",
            "Tokens of recorded batch results by workspace, backend and kind",
            labels=["workspace", "backend", "kind"],
        )
        for workspace, backend, usage in self._figures.tokens_by_workspace:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_read", usage.cache_read_tokens),
            ):
                tokens.add_metric([workspace, backend, kind], count)
        yield tokens


def exposition(
    registry: CollectorRegistry, figures: RequestFigures, backends: Iterable[str]
) -> bytes:
    """The Prometheus text format of a registry followed by the database's figures
    (every backend named has a queue depth, zero when nothing waits for it)."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(FiguresCollector(figures, backends))
    return generate_latest(registry) + generate_latest(scrape)
