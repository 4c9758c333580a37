"""``GET /metrics``: the relay in Prometheus' text format.

Gauges and counters are read from the :class:`~mpesa_sync.relay.listener.Relay`
and its fan-out (:class:`~mpesa_sync.relay.fanout.Hub`) when Prometheus
scrapes; the one histogram is fed by a sink on the relay, once per event.
With ``relay --workers N`` each worker answers for itself: a scrape reaches
the worker that accepted it, which says which one it is
(``mpesa_sync_relay_worker``). Each app has a registry of its own (never the process-wide
default), so that two relays in one process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mpesa_sync.relay.events import StatusEvent
from mpesa_sync.relay.fanout import Hub
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.log import Item

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No *_created series beside the histogram: the relay's start time is not a
# metric anyone alerts on. (A switch for the whole process: the relay's own.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a millisecond (a relay beside its database) to a minute (a catch-up
# after an outage).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RelayMetrics:
    """The registry behind /metrics for one relay."""

    def __init__(
        self, relay: Relay, hub: Hub | None = None, labels: dict[str, str] | None = None
    ) -> None:
        self.labels = labels or {}
        self.registry = CollectorRegistry()
        self.registry.register(
            _RelayCollector(relay, hub or Hub(), int(self.labels.get("worker", 0)))
        )
        self._latency = Histogram(
            "mpesa_sync_relay_commit_to_send_seconds",
            "From an event's commit (its `at`, taken just before the commit, on the "
            "database's clock) to the relay reading it and handing it to its sinks "
            "(stdout), before the SSE streams are written.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        relay.add_sink(self._observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _observe(self, item: Item) -> None:
        if isinstance(item, StatusEvent):
            self._latency.observe(max(0.0, time.time() - item.at.timestamp()))


class _RelayCollector(Collector):
    def __init__(self, relay: Relay, hub: Hub, worker: int) -> None:
        self._relay = relay
        self._hub = hub
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        relay, stats, clients = self._relay, self._relay.stats, self._hub.stats
        yield _gauge(
            "mpesa_sync_relay_worker",
            "Which worker answered (relay --workers N: 0 to N-1; 0 for a single process).",
            self._worker,
        )
        yield _gauge("mpesa_sync_relay_clients", "Open SSE streams.", self._hub.count)
        yield _gauge(
            "mpesa_sync_relay_listening",
            "1 while the LISTEN connection is up and caught up, else 0.",
            int(relay.connected),
        )
        yield _gauge(
            "mpesa_sync_relay_last_event_id",
            "The id of the last event handed on (after a reset: the newest event).",
            relay.last_event_id,
        )
        yield _counter("mpesa_sync_relay_events", "Events handed on.", stats.events)
        yield _counter(
            "mpesa_sync_relay_dropped_clients",
            "SSE clients closed for falling behind: more unsent data queued than the bound "
            "(256 KiB), or a socket that refused writes for 5 s (one that never reads, too).",
            clients.dropped,
        )
        yield _counter(
            "mpesa_sync_relay_resets",
            "Times the relay found its own position invalid (log pruned past it, "
            "replaced or restored) and reset every consumer.",
            stats.resets,
        )
        yield _counter(
            "mpesa_sync_relay_client_resets",
            "SSE streams reset because the client's Last-Event-ID could not be honoured.",
            clients.client_resets,
        )
        yield _counter(
            "mpesa_sync_relay_refused_clients",
            "SSE clients refused with 503 at the client cap (--max-clients).",
            clients.refused,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
