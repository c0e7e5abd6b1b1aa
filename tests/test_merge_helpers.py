"""Shared helpers for the receive/ tests (no tests here): real headers and a driven game."""

from twisted.internet.task import Clock

from replayserver.merge.live import LiveReplay
from replayserver.merge.stream import WriterStream
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
            self.clock, delay=delay, sample_interval=sample_interval, **options
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
