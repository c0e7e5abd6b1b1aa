"""Prometheus metrics of one service instance, under the names FAF's dashboards use.

Metrics are kept only where something can read them: in a process with ``server.http_listen``
(which serves ``/metrics``) and in worker processes (whose figures the listening process
gathers). Elsewhere ``Metrics(exported=False)`` holds metrics that count nothing, and
prometheus_client is not even imported: a process imports only what its configuration uses.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from replayserver.outcomes import ConnectionCategory, ConnectionResult

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: The values of the ``result`` label of :attr:`Metrics.served_connections`.
RESULTS = tuple(result.value for result in ConnectionResult)
#: The values of the ``category`` label of :attr:`Metrics.active_connections`.
CATEGORIES = tuple(category.value for category in ConnectionCategory)


class CounterMetric(Protocol):
    """What the server does with a counter."""

    def labels(self, **labels: Any) -> CounterMetric: ...

    def inc(self, amount: float = ...) -> None: ...


class GaugeMetric(Protocol):
    """What the server does with a gauge."""

    def labels(self, **labels: Any) -> GaugeMetric: ...

    def inc(self, amount: float = ...) -> None: ...

    def dec(self, amount: float = ...) -> None: ...

    def set(self, value: float) -> None: ...


class HistogramMetric(Protocol):
    """What the server does with a histogram."""

    def observe(self, amount: float) -> None: ...


class _NullMetric:
    """A metric that counts nothing (no ``/metrics`` to show it): any kind, any labels."""

    __slots__ = ()

    def labels(self, **labels: Any) -> _NullMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NULL = _NullMetric()


class _Exported:
    """Makes prometheus_client metrics in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()
                ) -> CounterMetric:
        from prometheus_client import Counter

        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetric:
        from prometheus_client import Gauge

        return Gauge(name, documentation, labels, registry=self.registry)

    def histogram(self, name: str, documentation: str, buckets: tuple[float, ...]
                  ) -> HistogramMetric:
        from prometheus_client import Histogram

        return Histogram(name, documentation, buckets=buckets, registry=self.registry)


class _NoMetrics:
    """Makes metrics that count nothing."""

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()
                ) -> CounterMetric:
        return _NULL

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetric:
        return _NULL

    def histogram(self, name: str, documentation: str, buckets: tuple[float, ...]
                  ) -> HistogramMetric:
        return _NULL


class Metrics:
    """The service's metrics in their own registry (so several services can coexist); with
    ``exported`` false, metrics that count nothing (and ``registry`` is None)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 exported: bool = True) -> None:
        make: _Exported | _NoMetrics
        if exported:
            if registry is None:
                from prometheus_client import CollectorRegistry

                registry = CollectorRegistry()
            make = _Exported(registry)
        else:
            make = _NoMetrics()
        self.registry = registry if exported else None
        self.active_connections = make.gauge(
            "replayserver_active_connections_count",
            "Connections open now, by what they turned out to be", ("category",))
        self.served_connections = make.counter(
            "replayserver_served_connections", "Connections closed, by how they ended",
            ("result",))
        self.running_replays = make.gauge(
            "replayserver_running_replays_count",
            "Games whose replay is being received or sent now")
        self.finished_replays = make.counter(
            "replayserver_finished_replays", "Games whose writing phase has ended")
        self.saved_replay_files = make.counter(
            "replayserver_saved_replay_files", "Replay files written to the vault")
        # Beyond FAF's dashboards: what shows trouble early.
        self.received_bytes = make.counter(
            "replayserver_received_bytes",
            "Bytes received from writers after their header (added every few seconds)")
        self.sent_bytes = make.counter(
            "replayserver_sent_bytes", "Replay bytes written to readers")
        self.failed_saves = make.counter(
            "replayserver_failed_saves", "Games whose replay was not saved, by reason",
            ("reason",))
        self.save_retries = make.counter(
            "replayserver_save_retries", "Save steps that failed and will be retried, by step",
            ("step",))
        self.save_duration = make.histogram(
            "replayserver_save_duration_seconds",
            "From the end of a game's writing phase until its replay is in the vault",
            (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
        self.pending_saves = make.gauge(
            "replayserver_pending_saves_count", "Saves waiting to retry a failed step")
        self.diverged_streams = make.counter(
            "replayserver_diverged_streams",
            "Writer streams that did not agree with their game's merged replay")
        self.refused_connections = make.counter(
            "replayserver_refused_connections",
            "Connections refused after their header, by kind (writer, reader) and reason",
            ("kind", "reason"))
        self.limited_connections = make.counter(
            "replayserver_limited_connections",
            "Connections refused or dropped by a limit, by the limit's configuration key",
            ("limit",))
        self.reader_lag = make.gauge(
            "replayserver_reader_lag_bytes",
            "Most bytes any reader is behind the delayed edge (sampled every few seconds)")
        self.reactor_stall = make.gauge(
            "replayserver_reactor_stall_seconds",
            "Longest time the event loop was blocked since the start (the most of any process)")
        # Make every label value visible (at 0) from the start.
        for category in CATEGORIES:
            self.active_connections.labels(category=category)
        for result in RESULTS:
            self.served_connections.labels(result=result)
