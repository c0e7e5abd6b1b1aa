"""One /metrics and one /live for all workers: the main process asks every worker and merges.

Workers answer queries with their metric families (`metric_families`) and game snapshots.
`WorkerStatus` merges them with the main process's own metrics (connections still in their
header phase, rejected headers): samples with the same name and labels are added up. The
counters of a worker that died are kept as last seen (so totals do not go backwards when it
restarts from zero). `WorkerStatus` gives the merged exposition text (served by
`replayserver.http.MetricsText`) and is the main process's `replayserver.http.LiveSource`; both
answer once every worker has.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import generate_latest
from twisted.internet import defer

from replayserver.workers.handoff import Dispatcher, WorkerChannel
from replayserver.workers.wire import worker_for

#: Metric types whose samples only grow: they survive a worker's death.
CUMULATIVE = frozenset({"counter", "histogram", "summary"})
#: Gauges that are a maximum over the games: merged by taking the largest, not the sum.
MAXIMA = frozenset({"replayserver_reader_lag_bytes", "replayserver_reactor_stall_seconds"})

Families = list  # [[name, type, documentation, [[sample name, labels, value], ...]], ...]


def metric_families(registry: CollectorRegistry) -> Families:
    """A registry's current samples as JSON-able data (``*_created`` samples left out)."""
    families = []
    for family in registry.collect():
        samples = [[s.name, s.labels, s.value] for s in family.samples
                   if not (family.type in CUMULATIVE and s.name.endswith("_created"))]
        families.append([family.name, family.type, family.documentation, samples])
    return families


def merge(*parts: Families) -> list[Metric]:
    """Families added up sample by sample (same sample name and labels); `MAXIMA` take the
    largest value instead."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
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


class _Collected:
    """What ``generate_latest`` needs: something with ``collect()``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


class WorkerStatus:
    """Asks the running workers and merges their answers."""

    def __init__(self, dispatcher: Dispatcher, local: CollectorRegistry) -> None:
        self._dispatcher = dispatcher
        self._local = local
        self._last: dict[WorkerChannel, Families] = {}
        self._retired: Families = []

    def _ask(self, channel: WorkerChannel, what: dict[str, Any]) -> defer.Deferred:
        answer = channel.query(what)
        answer.addErrback(lambda _: None)  # the worker died meanwhile
        return answer

    @defer.inlineCallbacks
    def metrics(self):
        """The merged exposition text (bytes)."""
        channels = self._dispatcher.channels()
        answers = yield defer.gatherResults([self._ask(c, {"what": "metrics"}) for c in channels])
        for channel, families in zip(channels, answers):
            if families is None:
                continue
            if channel not in self._last:
                channel.lost.addCallback(lambda _, c=channel: self._retire(c))
            self._last[channel] = families
        current = [self._last[c] for c in channels if c in self._last]
        merged = merge(metric_families(self._local), self._retired, *current)
        return generate_latest(_Collected(merged))

    def _retire(self, channel: WorkerChannel) -> None:
        families = self._last.pop(channel, [])
        kept = [family for family in families if family[1] in CUMULATIVE]
        self._retired = [[m.name, m.type, m.documentation,
                          [[s.name, s.labels, s.value] for s in m.samples]]
                         for m in merge(self._retired, kept)]

    @defer.inlineCallbacks
    def snapshots(self):
        """Every worker's games (``Game.snapshot()`` each)."""
        channels = self._dispatcher.channels()
        answers = yield defer.gatherResults([self._ask(c, {"what": "games"}) for c in channels])
        return [game for games in answers if games for game in games]

    def snapshot(self, game_id: int) -> defer.Deferred:
        """One game's detailed snapshot, or None, from the worker that owns it."""
        channel = self._dispatcher.channel(worker_for(game_id, self._dispatcher.count))
        if channel is None:
            return defer.succeed(None)
        return self._ask(channel, {"what": "game", "game_id": game_id})
