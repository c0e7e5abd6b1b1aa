"""WriterStream: one writer connection's SCFA stream, header kept whole and body buffered.

``feed`` is the per-chunk hot path (the server gets about 20,000 chunks/s), so it is an instance
attribute rebound as the stream changes phase instead of a method that branches on the phase:
while the header is incomplete it runs the incremental HeaderParser; once the header is complete
it *is* ``body.append`` (one bytearray extension per chunk); once the stream has ended it drops
the bytes. No merge work is done per chunk: the merge reads the bodies on the sampler's tick.
"""

from typing import Callable

from replayserver.receive.buffer import StreamBuffer
from replayserver.replay.errors import HeaderError
from replayserver.replay.header import HeaderParser, ReplayHeader


class WriterStream:
    """The stream of one writer: ``name`` as sent in its handshake, ``index`` = arrival order."""

    feed: Callable[[bytes], None]
    """Add received bytes, O(len(data)). Raises HeaderError on an invalid header (the stream is
    then ended uncleanly and takes no further part in the merge). Bytes fed after the end are
    ignored."""

    def __init__(
        self,
        name: str,
        index: int,
        on_header: Callable[["WriterStream"], None] | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.header: ReplayHeader | None = None
        self.header_raw: bytes | None = None
        self.header_error: HeaderError | None = None
        self.body = StreamBuffer()
        self.ended = False
        self.clean_end: bool | None = None
        self._on_header = on_header
        self._parser: HeaderParser | None = HeaderParser()
        self._header_fed = 0
        self.feed = self._feed_header

    @property
    def received(self) -> int:
        """Total bytes fed (header and body) before the end."""
        if self.header_raw is None:
            return self._header_fed
        return len(self.header_raw) + len(self.body)

    def _feed_header(self, data: bytes) -> None:
        assert self._parser is not None
        self._header_fed += len(data)
        try:
            header = self._parser.feed(data)
        except HeaderError as error:
            self.header_error = error
            self.end(clean=False)
            raise
        if header is None:
            return
        self.header = header
        self.header_raw = self._parser.raw
        excess = self._parser.excess
        self._parser = None
        self.feed = self.body.append
        if excess:
            self.body.append(excess)
        if self._on_header is not None:
            self._on_header(self)

    def _ignore(self, data: bytes) -> None:
        pass

    def end(self, clean: bool) -> None:
        """The connection closed (``clean``: orderly EOF or WebSocket close 1000). Idempotent."""
        if self.ended:
            return
        self.ended = True
        self.clean_end = clean
        self.feed = self._ignore
        if self._parser is not None:
            try:
                self._parser.end()
            except HeaderError as error:
                self.header_error = self.header_error or error
            self._parser = None
