"""StallWatch: the longest time this process's event loop was busy elsewhere when it should
have run a timer (a blocking file operation, a long computation), for ``/metrics``.

A timer is set every ``interval`` seconds; how late it fires is how long the loop could not
get to it. The largest lateness seen since the start is the gauge
``replayserver_reactor_stall_seconds`` (docs/operations.md); the load benchmark reads it.
"""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from replayserver.metrics import GaugeMetric

#: Seconds between probes (the cost is one timer call per probe).
INTERVAL = 0.1


class StallWatch(Service):
    """Measures how late a timer fires, as long as the service runs."""

    def __init__(self, clock: IReactorTime, gauge: GaugeMetric,
                 interval: float = INTERVAL) -> None:
        self._clock = clock
        self._gauge = gauge
        self._interval = interval
        self.longest = 0.0
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._schedule()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._probe)

    def _probe(self) -> None:
        late = self._clock.seconds() - self._due
        if late > self.longest:
            self.longest = late
            self._gauge.set(late)
        self._schedule()
