"""Prometheus metrics of one service instance, under the names FAF's dashboards use."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

#: The values of the ``result`` label of :attr:`Metrics.served_connections`.
RESULTS = ("Success", "Bad data", "I/O error", "No replay matched", "Timeout", "Refused")
#: The values of the ``category`` label of :attr:`Metrics.active_connections`.
CATEGORIES = ("initial", "reader", "writer")


class Metrics:
    """The service's metrics in their own registry (so several services can coexist)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.active_connections = Gauge(
            "replayserver_active_connections_count",
            "Connections open now, by what they turned out to be",
            ["category"],
            registry=self.registry,
        )
        self.served_connections = Counter(
            "replayserver_served_connections",
            "Connections closed, by how they ended",
            ["result"],
            registry=self.registry,
        )
        self.running_replays = Gauge(
            "replayserver_running_replays_count",
            "Games whose replay is being received or sent now",
            registry=self.registry,
        )
        self.finished_replays = Counter(
            "replayserver_finished_replays",
            "Games whose writing phase has ended",
            registry=self.registry,
        )
        self.saved_replay_files = Counter(
            "replayserver_saved_replay_files",
            "Replay files written to the vault",
            registry=self.registry,
        )
        # Make every label value visible (at 0) from the start.
        for category in CATEGORIES:
            self.active_connections.labels(category=category)
        for result in RESULTS:
            self.served_connections.labels(result=result)
