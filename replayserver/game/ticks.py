"""Game ticks of bodies that grow, each byte scanned once (for the live API, not per read)."""
from __future__ import annotations

from collections.abc import Iterable

from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.stream import WriterStream
from replayserver.replay.body import BodyScanner
from replayserver.replay.errors import BodyError


class TickCounter:
    """Advance ticks of one growing body, each byte scanned once (when asked, not per read)."""

    __slots__ = ("_scanner", "counted", "_broken")

    def __init__(self) -> None:
        self._scanner = BodyScanner()
        self.counted = 0  # body bytes scanned
        self._broken = False  # the bytes do not scan: keep the ticks counted so far

    @property
    def ticks(self) -> int:
        return self._scanner.ticks

    def count_canonical(self, canonical: CanonicalReplay, end: int) -> int:
        """Ticks of the merged body up to ``end``."""
        self._scan(canonical.chunks(self.counted, end), end)
        return self.ticks

    def count_stream(self, stream: WriterStream, canonical: CanonicalReplay) -> int:
        """Ticks of a writer's body so far.

        The merge releases the bytes it has compared; those of a stream that agreed with the
        merged body are read from the merged body instead.
        """
        body = stream.body
        if self.counted < body.start:
            if body.start > canonical.length:  # released beyond the merged body: diverged
                self._broken = True
            self._scan(canonical.chunks(self.counted, body.start), body.start)
        self._scan([body.slice(self.counted, len(body))], len(body))
        return self.ticks

    def _scan(self, chunks: Iterable[bytes], end: int) -> None:
        if self.counted >= end or self._broken:
            return
        try:
            for chunk in chunks:
                self._scanner.feed(chunk)
        except BodyError:
            self._broken = True
        self.counted = end
