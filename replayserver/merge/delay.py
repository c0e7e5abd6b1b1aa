"""The live delay: each writer's body length sampled on one timer per game.

Every ``sample_interval`` seconds the sampler records each stream's body length into a ring of
``ceil(delay / sample_interval) + 1`` samples, filled with zeros when the stream is added (it
had nothing before). The oldest sample is the stream's *delayed position*: its length
``delay`` seconds ago. A stream that has ended keeps being sampled, so it keeps its delay: its
delayed position reaches its full length ``delay`` seconds after its end, not at once (when the
first players of a game leave while others play on, spectators must not see that moment live;
see docs/merge-and-delay.md). Only the end of the game's writing phase shows everything. The
same tick records each stream's length and when it last grew (the merge works on these
lengths, and its stall rule on the growth time), then calls the game's ``on_tick`` (the merge).
One timer (`Ticker`) serves all the games of a server: every game is sampled on the same beat.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from replayserver.merge.stream import WriterStream

log = Logger()

_MOST = 2**32 - 1  # the largest length a sample holds (longer streams are held back there)


class StreamTiming:
    """The delay ring and last growth time of one stream."""

    __slots__ = ("stream", "_ring", "_oldest", "length", "grew_at")

    def __init__(self, stream: WriterStream, samples: int, now: float) -> None:
        self.stream = stream
        # 4 bytes a sample (a writer is dropped long before 4 GiB: limits.stream_bytes)
        self._ring = array("I", bytes(4 * samples))  # zeros
        self._oldest = 0  # index of the oldest sample
        self.length = 0  # body length at the last sample
        self.grew_at = now  # clock time of the last sample that saw the stream grow (or added)

    def sample(self, now: float) -> None:
        length = len(self.stream.body)
        oldest = self._oldest
        self._ring[oldest] = length if length < _MOST else _MOST
        oldest += 1
        self._oldest = 0 if oldest == len(self._ring) else oldest
        if length != self.length:
            self.length = length
            self.grew_at = now

    @property
    def delayed_position(self) -> int:
        """Body bytes the stream had ``delay`` seconds ago (ended or not)."""
        return self._ring[self._oldest]


class Ticker:
    """One timer that ticks every ``interval`` seconds the samplers that run (it runs while
    any does): the games of a server share it instead of a timer each."""

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the sample interval must be > 0")
        self.clock = clock
        self.interval = interval
        self._samplers: dict[DelaySampler, None] = {}  # in order of arrival
        self._call: LoopingCall | None = None

    def add(self, sampler: DelaySampler) -> None:
        self._samplers[sampler] = None
        if self._call is None:
            self._call = LoopingCall(self._tick)
            self._call.clock = self.clock
            self._call.start(self.interval, now=False).addErrback(
                lambda failure: log.failure("Replay delay sampler stopped", failure)
            )

    def remove(self, sampler: DelaySampler) -> None:
        self._samplers.pop(sampler, None)
        if not self._samplers and self._call is not None:
            call, self._call = self._call, None
            if call.running:
                call.stop()

    def _tick(self) -> None:
        for sampler in list(self._samplers):
            try:
                sampler.tick()
            except Exception:  # one game's trouble must not stop the others' delay
                log.failure("A game's replay delay tick failed")


class DelaySampler:
    """Samples every tracked stream once per tick of its `Ticker` (every ``sample_interval``
    seconds) and then calls ``on_tick``."""

    def __init__(
        self,
        ticker: Ticker,
        *,
        delay: float,
        on_tick: Callable[[float], None],
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self._ticker = ticker
        self._clock = ticker.clock
        self._samples = math.ceil(delay / ticker.interval) + 1
        self._on_tick = on_tick
        self._timings: list[StreamTiming] = []

    def track(self, stream: WriterStream) -> StreamTiming:
        """Start sampling ``stream`` (and ticking, on the first stream)."""
        timing = StreamTiming(stream, self._samples, self._clock.seconds())
        self._timings.append(timing)
        if len(self._timings) == 1:
            self._ticker.add(self)
        return timing

    def tick(self) -> None:
        """Sample all streams, then run ``on_tick``."""
        now = self.sample()
        self._on_tick(now)

    def sample(self) -> float:
        """Sample all streams now (without running ``on_tick``); return the clock time."""
        now = self._clock.seconds()
        for timing in self._timings:
            timing.sample(now)
        return now

    def stop(self) -> None:
        """Stop ticking (idempotent)."""
        self._ticker.remove(self)
