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
One ``LoopingCall`` serves all streams of a game.
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


class DelaySampler:
    """Samples every tracked stream once per ``sample_interval`` and then calls ``on_tick``."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        delay: float,
        sample_interval: float,
        on_tick: Callable[[float], None],
    ) -> None:
        if delay < 0 or sample_interval <= 0:
            raise ValueError("delay must be >= 0 and sample_interval > 0")
        self._clock = clock
        self._interval = sample_interval
        self._samples = math.ceil(delay / sample_interval) + 1
        self._on_tick = on_tick
        self._timings: list[StreamTiming] = []
        self._call: LoopingCall | None = None

    def track(self, stream: WriterStream) -> StreamTiming:
        """Start sampling ``stream`` (and the timer, on the first stream)."""
        timing = StreamTiming(stream, self._samples, self._clock.seconds())
        self._timings.append(timing)
        if self._call is None:
            self._call = LoopingCall(self.tick)
            self._call.clock = self._clock
            self._call.start(self._interval, now=False).addErrback(
                lambda failure: log.failure("Replay delay sampler stopped", failure)
            )
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
        """Stop the timer (idempotent)."""
        if self._call is not None and self._call.running:
            self._call.stop()
