"""One /metrics, one /live and one /healthz for all workers: the main process asks every worker.

Workers answer queries with their metric families (`metric_families`), game snapshots and
health checks. `WorkerStatus` merges the metrics with the main process's own (connections still
in their header phase, rejected headers, the worker queue): samples with the same name and
labels are added up. The counters of a worker that died are kept as last seen (so totals do
not go backwards when it restarts from zero). `WorkerStatus` gives the merged exposition text
(the `replayserver.http.MetricsText` of ``/metrics``), is the main process's
`replayserver.http.LiveSource` and runs a health check in every worker (`health`). A worker
that dies while it is asked is left out; a worker that cannot answer (an answer too large
for the channel) fails that one request. See docs/operations.md.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.python.failure import Failure

from replayserver.workers.handoff import Dispatcher, WorkerChannel, WorkerGone
from replayserver.workers.placement import worker_for

#: Metric types whose samples only grow: they survive a worker's death.
CUMULATIVE = frozenset({"counter", "histogram", "summary"})
#: Gauges that are a maximum over the games: merged by taking the largest, not the sum.
MAXIMA = frozenset({"replayserver_reader_lag_bytes", "replayserver_reactor_stall_seconds"})

Sample = list[Any]  # [sample name, {label: value}, value]
Family = list[Any]  # [name, type, documentation, [Sample, ...]]
Families = list[Family]


def metric_families(registry: CollectorRegistry) -> Families:
    """A registry's current samples as JSON-able data (``*_created`` samples left out)."""
    families: Families = []
    for family in registry.collect():
        samples = [[s.name, s.labels, s.value] for s in family.samples
                   if not (family.type in CUMULATIVE and s.name.endswith("_created"))]
        families.append([family.name, family.type, family.documentation, samples])
    return families


def merge(*parts: Families) -> list[Metric]:
    """Families added up sample by sample (same sample name and labels); `MAXIMA` take the
    largest value instead."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in parts:
        for name, kind, documentation, samples in families:
            if name not in merged:
                merged[name] = Metric(name, documentation, kind)
                values[name] = {}
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if name in MAXIMA:
                    values[name][key] = max(values[name].get(key, value), value)
                else:
                    values[name][key] = values[name].get(key, 0.0) + value
    for name, metric in merged.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _Collected(Collector):
    """Metrics already collected, for an exposition registry."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def exposition(metrics: list[Metric]) -> bytes:
    """The Prometheus text format of ``metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(metrics))
    text: bytes = generate_latest(registry)
    return text


def _unless_gone(failure: Failure) -> None:
    """A worker that died while it was asked has no answer (None); other failures stay."""
    failure.trap(WorkerGone)
    return None


class WorkerStatus:
    """Asks the running workers and merges their answers."""

    def __init__(self, dispatcher: Dispatcher, local: CollectorRegistry) -> None:
        self._dispatcher = dispatcher
        self._local = local
        self._last: dict[WorkerChannel, Families] = {}
        self._retired: Families = []

    def _ask(self, channel: WorkerChannel, what: dict[str, Any]) -> defer.Deferred[Any]:
        return channel.query(what).addErrback(_unless_gone)

    async def _ask_all(self, what: dict[str, Any]) -> list[tuple[WorkerChannel, Any]]:
        """Every running worker's answer (None for one that died meanwhile); fails with the
        first failure of another kind."""
        channels = self._dispatcher.channels()
        try:
            answers = await defer.gatherResults([self._ask(c, what) for c in channels],
                                                consumeErrors=True)
        except defer.FirstError as error:
            error.subFailure.raiseException()
        return list(zip(channels, answers))

    def metrics(self) -> defer.Deferred[bytes]:
        """The merged exposition text. A worker that cannot answer counts as last seen."""
        channels = self._dispatcher.channels()
        asked = [self._ask(c, {"what": "metrics"}).addErrback(lambda _: None) for c in channels]
        return defer.gatherResults(asked).addCallback(
            lambda answers: self._merged(list(zip(channels, answers))))

    def _merged(self, answers: list[tuple[WorkerChannel, Families | None]]) -> bytes:
        for channel, families in answers:
            if families is None:
                continue
            if channel not in self._last:
                channel.lost.addCallback(self._retire, channel)
            self._last[channel] = families
        current = [self._last[c] for c, _ in answers if c in self._last]
        merged = merge(metric_families(self._local), self._retired, *current)
        return exposition(merged)

    def _retire(self, _: object, channel: WorkerChannel) -> None:
        """A worker is gone: its cumulative metrics are kept as last seen."""
        families = self._last.pop(channel, [])
        kept = [family for family in families if family[1] in CUMULATIVE]
        self._retired = [[m.name, m.type, m.documentation,
                          [[s.name, s.labels, s.value] for s in m.samples]]
                         for m in merge(self._retired, kept)]

    def snapshots(self) -> defer.Deferred[list[dict[str, Any]]]:
        """Every worker's games (``Game.snapshot()`` each)."""
        return defer.ensureDeferred(self._snapshots())

    async def _snapshots(self) -> list[dict[str, Any]]:
        answers = await self._ask_all({"what": "games"})
        return [game for _, games in answers if games for game in games]

    def snapshot(self, game_id: int) -> defer.Deferred[dict[str, Any] | None]:
        """One game's detailed snapshot, or None, from the worker that owns it."""
        channel = self._dispatcher.channel(worker_for(game_id, self._dispatcher.count))
        if channel is None:
            return defer.succeed(None)
        return self._ask(channel, {"what": "game", "game_id": game_id})

    def health(self, check: str) -> defer.Deferred[None]:
        """Run the health check ``check`` in every running worker; fails with the reasons of
        the workers where it fails."""
        return defer.ensureDeferred(self._health(check))

    async def _health(self, check: str) -> None:
        answers = await self._ask_all({"what": "health", "check": check})
        failing = [f"worker {channel.index}: {reason}" for channel, reason in answers
                   if reason is not None]
        if failing:
            raise RuntimeError("; ".join(failing))
