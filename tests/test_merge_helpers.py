"""Shared helpers for the merge tests (no tests here): real headers, a driven game, and the
merge of whole streams at once (the reference the incremental crash recovery is checked
against)."""

from collections.abc import Sequence

from twisted.internet.task import Clock

from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.delay import Ticker
from replayserver.merge.live import LiveReplay
from replayserver.merge.stream import WriterStream
from replayserver.replay.errors import HeaderError
from replayserver.replay.header import parse_header
from tests.support import samples


def split(name: str) -> tuple[bytes, bytes]:
    """A sample SCFA stream as (header bytes, body bytes)."""
    data = samples.read(name)
    size = parse_header(data).size
    return data[:size], data[size:]


HEADER, BODY = split("8805603.scfareplay")


class DrivenGame:
    """A LiveReplay on a Clock, with helpers to add writers and let time pass."""

    def __init__(self, *, delay: float = 0, sample_interval: float = 1, **options) -> None:
        self.clock = Clock()
        self.live = LiveReplay(
            Ticker(self.clock, sample_interval), delay=delay, **options
        )
        self.canonical = self.live.canonical

    def writer(self, body: bytes = b"", header: bytes = HEADER) -> WriterStream:
        """A new writer that has sent a header and ``body``."""
        stream = self.live.add_writer(f"writer{len(self.live.streams)}")
        stream.feed(header + body)
        return stream

    def tick(self, seconds: float = 1, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(seconds)

    def finish(self) -> bytes:
        self.live.finish()
        return self.canonical.body()

    def provenance(self, stream: WriterStream):
        return self.live.provenance()[stream.index]


def merge_streams(
    streams: Sequence[bytes], *, quorum: int = 2, comparison_window: int = 4096
) -> CanonicalReplay:
    """Merge whole raw SCFA streams into a finished replay, all at once.

    Each stream is one writer that ended cleanly; streams with an invalid or incomplete header
    take no part (and do not provide the header).
    """
    live = LiveReplay(
        Ticker(Clock(), 1), delay=0, quorum=quorum, comparison_window=comparison_window
    )
    for index, data in enumerate(streams):
        stream = live.add_writer(f"stream {index}")
        try:
            stream.feed(data)
        except HeaderError:
            continue
        stream.end(clean=True)
    live.finish()
    return live.canonical
