"""CanonicalReplay: the one merged replay of a game that every reader and the saver share.

The header is the first complete writer header (headers are never merged byte by byte), kept
as its raw bytes, deflated (FAF headers, 2 to 50 KB of Lua tables and names, shrink to about a
third: 6 KB less per game for a typical 9 KB one; inflating takes tens of microseconds, once
for each reader and for the save), and a small summary for the live API (map, players). The
whole decoded header (tens of KB of Python objects for a big lobby) is not kept for the life
of the game: the saver decodes the bytes again. The
body only grows; it is kept whole (readers start from byte 0 and the saver needs all of it; a
5-hour game is a few MB) as a list of immutable ``bytes`` segments of about 64 KiB plus a small
``bytearray`` tail that the merge extends. A read of a bounded range joins at most the pieces
it covers, and a read of exactly one whole segment returns that very object, so readers never
copy the body. ``delayed_length`` is how much of the body readers may see now.

Readers wait through Deferreds kept in one list per replay: ``wait(position)`` fires once
``delayed_length > position`` or the replay is finished, ``when_header()`` once the header is
known (or the replay finished without one). Waiters are collected first and fired after the
state is updated, so a callback that reads or waits again sees a consistent replay.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Iterator

import attrs
from twisted.internet.defer import Deferred, succeed

from replayserver.replay.header import ReplayHeader

SEGMENT_SIZE = 1 << 16
#: zlib level of the kept header (higher levels gain nothing on these headers).
HEADER_LEVEL = 6


@attrs.frozen
class HeaderSummary:
    """What the live API shows of a replay header."""

    map_name: str
    players: tuple[str, ...]

    @classmethod
    def of(cls, header: ReplayHeader) -> HeaderSummary:
        names = (army.options.get("PlayerName") for army in header.players)
        return cls(header.map_name, tuple("" if name is None else str(name) for name in names))


class CanonicalReplay:
    """Header, merged body, delayed length and finished flag of one game's replay."""

    def __init__(self) -> None:
        self._header_deflated: bytes | None = None
        self.summary: HeaderSummary | None = None
        self.length = 0
        self.delayed_length = 0
        self.finished = False
        self._segments: list[bytes] = []
        self._segment_starts: list[int] = []
        self._tail = bytearray()
        self._tail_start = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._header_waiters: list[Deferred[None]] = []

    # -- readers

    def when_header(self) -> Deferred[None]:
        """Fires (with None) once the header is set, or once finished without a header."""
        if self.has_header or self.finished:
            return succeed(None)
        waiter: Deferred[None] = Deferred(canceller=self._forget_header_waiter)
        self._header_waiters.append(waiter)
        return waiter

    def _forget_header_waiter(self, waiter: Deferred[None]) -> None:
        # A waiter taken off the list to be fired may be cancelled by an earlier one's callback.
        if waiter in self._header_waiters:
            self._header_waiters.remove(waiter)

    def wait(self, position: int) -> Deferred[None]:
        """Fires (with None) once ``delayed_length > position`` or the replay is finished."""
        if self.delayed_length > position or self.finished:
            return succeed(None)
        entry: tuple[int, Deferred[None]]

        def cancel(waiter: Deferred[None]) -> None:
            if entry in self._waiters:  # not if taken off the list to be fired already
                self._waiters.remove(entry)

        entry = (position, Deferred(canceller=cancel))
        self._waiters.append(entry)
        return entry[1]

    def read(self, start: int, size: int) -> bytes:
        """Body bytes ``[start, min(start + size, delayed_length))`` (empty if none)."""
        return self.slice(start, min(start + size, self.delayed_length))

    def body(self) -> bytes:
        """The whole merged body (for saving)."""
        return b"".join([*self._segments, self._tail])

    def chunks(self, start: int, stop: int) -> Iterator[bytes]:
        """Body bytes ``[start, stop)`` (clipped to the length) as consecutive pieces."""
        stop = min(stop, self.length)
        position = start
        index = bisect_right(self._segment_starts, position) - 1
        while position < stop and 0 <= index < len(self._segments):
            offset = position - self._segment_starts[index]
            segment = self._segments[index]
            piece = segment[offset : offset + stop - position]
            yield piece
            position += len(piece)
            index += 1
        if position < stop:
            yield bytes(self._tail[position - self._tail_start : stop - self._tail_start])

    def slice(self, start: int, stop: int) -> bytes:
        """Body bytes ``[start, stop)`` (clipped to the length), regardless of the delay."""
        if start < 0:
            raise ValueError("negative body offset")
        if start >= min(stop, self.length):
            return b""
        if start >= self._tail_start:  # the common case: near the end
            return bytes(self._tail[start - self._tail_start : stop - self._tail_start])
        pieces = list(self.chunks(start, stop))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    # -- the merge

    @property
    def has_header(self) -> bool:
        return self._header_deflated is not None

    @property
    def header_raw(self) -> bytes | None:
        """The header's bytes (inflated anew on each use: keep them only as long as needed)."""
        deflated = self._header_deflated
        return None if deflated is None else zlib.decompress(deflated)

    def set_header(self, header: ReplayHeader, raw: bytes) -> None:
        """Choose the header (only the first call counts) and wake the header waiters."""
        if self.has_header:
            return
        self._header_deflated = zlib.compress(raw, HEADER_LEVEL)
        self.summary = HeaderSummary.of(header)
        self._fire_header_waiters()

    def append(self, data: bytes) -> None:
        """Extend the merged body (not yet visible: see ``advance``)."""
        self._tail += data
        self.length += len(data)
        if len(self._tail) >= SEGMENT_SIZE:
            self._segments.append(bytes(self._tail))
            self._segment_starts.append(self._tail_start)
            self._tail_start = self.length
            self._tail = bytearray()

    def advance(self, delayed_length: int) -> None:
        """Let readers see up to ``delayed_length`` (never backwards, never beyond the length)."""
        delayed_length = min(delayed_length, self.length)
        if delayed_length <= self.delayed_length:
            return
        self.delayed_length = delayed_length
        ready = [waiter for position, waiter in self._waiters if position < delayed_length]
        if ready:
            self._waiters = [entry for entry in self._waiters if entry[0] >= delayed_length]
            _fire(ready)

    def finish(self) -> None:
        """The merge is complete: everything becomes visible and every waiter fires."""
        if self.finished:
            return
        self.delayed_length = self.length
        self.finished = True
        self._fire_header_waiters()
        waiters, self._waiters = self._waiters, []
        _fire([waiter for _, waiter in waiters])

    def _fire_header_waiters(self) -> None:
        waiters, self._header_waiters = self._header_waiters, []
        _fire(waiters)


def _fire(waiters: list[Deferred[None]]) -> None:
    """Fire waiters taken off their list; one may be cancelled by an earlier one's callback."""
    for waiter in waiters:
        if not waiter.called:
            waiter.callback(None)
