"""Prometheus metrics of one service instance, under the names FAF's dashboards use."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from replayserver.outcomes import ConnectionCategory, ConnectionResult

#: The values of the ``result`` label of :attr:`Metrics.served_connections`.
RESULTS = tuple(result.value for result in ConnectionResult)
#: The values of the ``category`` label of :attr:`Metrics.active_connections`.
CATEGORIES = tuple(category.value for category in ConnectionCategory)


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
        # Beyond FAF's dashboards: what shows trouble early.
        self.received_bytes = Counter(
            "replayserver_received_bytes",
            "Bytes received from writers after their header (added every few seconds)",
            registry=self.registry,
        )
        self.sent_bytes = Counter(
            "replayserver_sent_bytes", "Replay bytes written to readers", registry=self.registry,
        )
        self.failed_saves = Counter(
            "replayserver_failed_saves", "Games whose replay was not saved, by reason",
            ["reason"], registry=self.registry,
        )
        self.save_retries = Counter(
            "replayserver_save_retries", "Save steps that failed and will be retried, by step",
            ["step"], registry=self.registry,
        )
        self.save_duration = Histogram(
            "replayserver_save_duration_seconds",
            "From the end of a game's writing phase until its replay is in the vault",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.pending_saves = Gauge(
            "replayserver_pending_saves_count", "Saves waiting to retry a failed step",
            registry=self.registry,
        )
        self.diverged_streams = Counter(
            "replayserver_diverged_streams",
            "Writer streams that did not agree with their game's merged replay",
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "replayserver_refused_connections",
            "Connections refused after their header, by kind (writer, reader) and reason",
            ["kind", "reason"], registry=self.registry,
        )
        self.limited_connections = Counter(
            "replayserver_limited_connections",
            "Connections refused or dropped by a limit, by the limit's configuration key",
            ["limit"], registry=self.registry,
        )
        self.reader_lag = Gauge(
            "replayserver_reader_lag_bytes",
            "Most bytes any reader is behind the delayed edge (sampled every few seconds)",
            registry=self.registry,
        )
        self.reactor_stall = Gauge(
            "replayserver_reactor_stall_seconds",
            "Longest time the event loop was blocked since the start (the most of any process)",
            registry=self.registry,
        )
        # Make every label value visible (at 0) from the start.
        for category in CATEGORIES:
            self.active_connections.labels(category=category)
        for result in RESULTS:
            self.served_connections.labels(result=result)
