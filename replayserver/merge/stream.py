"""WriterStream: one writer connection's SCFA stream: its header parsed once, its body buffered.

A stream goes through three phases (`StreamPhase`): HEADER while its SCFA header is incomplete,
BODY once it is complete, ENDED once the connection closed (or sent a bad header).

``feed`` is the per-read hot path, so it is an instance attribute rebound at each phase change
instead of a method that branches on the phase: in HEADER it runs the incremental HeaderParser;
in BODY it *is* ``body.append`` (one bytearray extension); in ENDED it drops the bytes. No merge
work is done per read: the merge reads the bodies on the sampler's tick.

Memory: the stream keeps neither its parsed header nor its raw header bytes. When the header
completes, both go to ``on_header`` (the game's replay keeps the first complete header of the
game and nothing of the others); the stream keeps only the header's size. So a writer costs its
header parser's buffer while the header arrives, then its body bytes that the merge still needs.
The writers of a game nearly always send the very same header: a stream given the game's
header (``known_header``) compares its bytes with it instead of parsing them, and parses only
if they differ, so the header is decoded (tens of KB of Lua tables for a big lobby) once per
game, not once per writer.
"""
from __future__ import annotations

import enum
from collections.abc import Callable

from replayserver.merge.buffer import StreamBuffer
from replayserver.replay.errors import HeaderError
from replayserver.replay.header import HeaderParser, ReplayHeader

#: Called once the stream's header is complete: (stream, parsed header, raw header bytes).
HeaderCallback = Callable[["WriterStream", ReplayHeader, bytes], None]


class StreamPhase(enum.Enum):
    HEADER = "header"
    BODY = "body"
    ENDED = "ended"


class WriterStream:
    """The stream of one writer: ``name`` as sent in its handshake, ``index`` = arrival order."""

    __slots__ = ("name", "index", "phase", "header_size", "header_error", "body", "clean_end",
                 "feed", "_on_header", "_parser", "_header_fed", "_known_header", "_known")

    feed: Callable[[bytes], None]
    """Add received bytes, O(len(data)). Raises HeaderError on an invalid header (the stream is
    then ENDED uncleanly and takes no further part in the merge). Bytes fed after the end are
    ignored."""

    def __init__(self, name: str, index: int, on_header: HeaderCallback | None = None,
                 known_header: Callable[[], bytes | None] | None = None) -> None:
        """``known_header`` gives the game's header once there is one (see the module)."""
        self.name = name
        self.index = index
        self.phase = StreamPhase.HEADER
        self.header_size: int | None = None  # once the header is complete
        self.header_error: HeaderError | None = None
        self.body = StreamBuffer()
        self.clean_end: bool | None = None  # once ENDED: orderly end or not
        self._on_header = on_header
        self._parser: HeaderParser | None = None  # made when the bytes need parsing
        self._header_fed = 0
        self._known_header = known_header
        self._known: bytes | None = None  # the game's header, while this one is compared to it
        self.feed = self._feed_header

    @property
    def ended(self) -> bool:
        return self.phase is StreamPhase.ENDED

    @property
    def header_ok(self) -> bool:
        """The header arrived complete and valid."""
        return self.header_size is not None

    @property
    def received(self) -> int:
        """Total bytes fed (header and body) before the end."""
        if self.header_size is None:
            return self._header_fed
        return self.header_size + len(self.body)

    def _feed_header(self, data: bytes) -> None:
        fed = self._header_fed
        self._header_fed += len(data)
        parser = self._parser
        if parser is None:
            known = self._known_of_game()
            if known is not None and data[:len(known) - fed] == known[fed:fed + len(data)]:
                if self._header_fed >= len(known):  # the game's header, whole
                    self._known = None
                    self._header_done(len(known), data[len(known) - fed:])
                return
            self._known = None
            parser = self._parser = HeaderParser()
            if fed:  # the bytes so far were the known header's first ones
                assert known is not None
                data = known[:fed] + data
        try:
            header = parser.feed(data)
        except HeaderError as error:
            self.header_error = error
            self.end(clean=False)
            raise
        if header is None:
            return
        raw = parser.raw
        assert raw is not None
        self._parser = None
        self._header_done(len(raw), parser.excess or b"")
        if self._on_header is not None:
            self._on_header(self, header, raw)

    def _known_of_game(self) -> bytes | None:
        """The game's header, asked for once while this stream's header matches it (the game
        keeps it deflated)."""
        if self._known is None and self._known_header is not None:
            self._known = self._known_header()
        return self._known

    def _header_done(self, size: int, excess: bytes) -> None:
        self.header_size = size
        self.phase = StreamPhase.BODY
        self.feed = self.body.append
        if excess:
            self.body.append(excess)

    def _ignore(self, data: bytes) -> None:
        pass

    def end(self, clean: bool) -> None:
        """The connection closed (``clean``: orderly EOF or WebSocket close 1000). Idempotent."""
        if self.phase is StreamPhase.ENDED:
            return
        self.phase = StreamPhase.ENDED
        self.clean_end = clean
        self.feed = self._ignore
        parser, self._parser = self._parser, None
        if parser is None and self.header_size is None:
            parser = HeaderParser()  # the known header's first bytes only, if any: incomplete
            if self._header_fed and self._known_header is not None:
                known = self._known_of_game()
                assert known is not None
                self._known = None
                parser.feed(known[:self._header_fed])
        if parser is not None:
            try:
                parser.end()
            except HeaderError as error:
                self.header_error = self.header_error or error
