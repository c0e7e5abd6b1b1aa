"""LiveReplay: the facade a Game uses to turn its writers' streams into one delayed replay.

It owns the writer streams, the delay sampler (one timer for the game), the quorum merge and
the CanonicalReplay readers share. The header readers get is the first writer header that
completes (chosen as soon as it completes, not on a tick, since readers need it at once).
"""

from __future__ import annotations

from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.delay import DelaySampler, Ticker
from replayserver.merge.provenance import TickIndex, WriterProvenance, describe_writers
from replayserver.merge.quorum import QuorumMerge
from replayserver.merge.stream import WriterStream
from replayserver.replay.header import ReplayHeader

DEFAULT_STALL_TIMEOUT = 60.0


class LiveReplay:
    """Writers in, one canonical replay out, ``delay`` seconds behind the writers, sampled on
    ``ticker``'s beat.

    ``stall_timeout`` is the merge's stall rule (see quorum.py); ``game_id`` names the game in
    log lines.
    """

    def __init__(
        self,
        ticker: Ticker,
        *,
        delay: float,
        quorum: int = 2,
        comparison_window: int = 4096,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        game_id: int | None = None,
    ) -> None:
        self.canonical = CanonicalReplay()
        self.streams: list[WriterStream] = []
        self._merge = QuorumMerge(
            self.canonical,
            quorum=quorum,
            comparison_window=comparison_window,
            stall_timeout=stall_timeout,
            game_id=game_id,
        )
        self._sampler = DelaySampler(ticker, delay=delay, on_tick=self._merge.run)
        self._ticks = TickIndex(self.canonical)

    def add_writer(self, name: str) -> WriterStream:
        """A new writer stream (compared from byte 0); starts the sampling timer on first use."""
        if self.canonical.finished:
            raise RuntimeError("the writing phase is over")
        stream = WriterStream(name, len(self.streams), on_header=self._header_complete,
                              known_header=self._known_header)
        self.streams.append(stream)
        self._merge.add(stream, self._sampler.track(stream))
        return stream

    def finish(self) -> None:
        """Writing phase over: end open streams (unclean), merge everything, show it all."""
        if self.canonical.finished:
            return
        self._sampler.stop()
        for stream in self.streams:
            stream.end(clean=False)
        self._merge.run(self._sampler.sample(), final=True)
        self.canonical.finish()

    def provenance(self) -> list[WriterProvenance]:
        """One record per writer, in arrival order."""
        return describe_writers(self.streams, self.canonical, self._merge.diverged_at, self._ticks)

    def _known_header(self) -> bytes | None:
        return self.canonical.header_raw

    def _header_complete(self, stream: WriterStream, header: ReplayHeader, raw: bytes) -> None:
        self.canonical.set_header(header, raw)
