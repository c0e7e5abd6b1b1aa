"""WriterProvenance: what each writer contributed to a game's replay, and where it split off.

No earlier FAF replay server kept this. For each writer: its name and arrival index, the bytes
it sent, whether its header was valid, how its connection ended, whether the merged replay
agrees with it (its body equals the merged body or is a prefix of it) and, if not, the body
offset where the merge found the first differing byte and the game tick there. The tick is
counted on the merged body up to that offset, which equals the writer's own count because the
two share that prefix; TickIndex counts once for all writers and remembers the results.
"""

from typing import Callable, Iterable

import attrs

from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.stream import WriterStream
from replayserver.replay.body import BodyScanner
from replayserver.replay.errors import BodyError


@attrs.frozen
class WriterProvenance:
    """One writer's part in the replay (a JSON-able record through ``as_dict``)."""

    name: str
    index: int
    received: int  # bytes received: header and body
    body_length: int
    header_ok: bool
    header_error: str | None
    ended: bool
    clean_end: bool | None
    agrees: bool  # the merged body equals this body or extends it
    matched: bool  # this body equals the whole merged body
    diverged_at: int | None  # body offset of the first byte that differs from the merged body
    diverged_tick: int | None  # Advance ticks before that offset

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


class TickIndex:
    """Advance ticks of a CanonicalReplay's body up to given offsets, counted once each."""

    def __init__(self, canonical: CanonicalReplay) -> None:
        self._canonical = canonical
        self._ticks: dict[int, int | None] = {}

    def ticks_at(self, offsets: Iterable[int]) -> dict[int, int | None]:
        """Ticks of the whole frames before each offset (None if the body is not valid there)."""
        missing = sorted(set(offsets) - self._ticks.keys())
        scanner = BodyScanner()
        position = 0
        valid = True
        for offset in missing:
            if valid:
                try:
                    for chunk in self._canonical.chunks(position, offset):
                        scanner.feed(chunk)
                except BodyError:
                    valid = False
                position = offset
            self._ticks[offset] = scanner.ticks if valid else None
        return self._ticks


def describe_writers(
    streams: Iterable[WriterStream],
    canonical: CanonicalReplay,
    diverged_at: Callable[[WriterStream], int | None],
    ticks: TickIndex,
) -> list[WriterProvenance]:
    """Provenance of each writer, from its stream and where the merge found it diverging."""
    streams = list(streams)
    divergences = {stream.index: diverged_at(stream) for stream in streams}
    tick_at = ticks.ticks_at(offset for offset in divergences.values() if offset is not None)
    records = []
    for stream in streams:
        offset = divergences[stream.index]
        header_ok = stream.header_ok and stream.header_error is None
        agrees = header_ok and offset is None
        records.append(
            WriterProvenance(
                name=stream.name,
                index=stream.index,
                received=stream.received,
                body_length=len(stream.body),
                header_ok=header_ok,
                header_error=None if stream.header_error is None else str(stream.header_error),
                ended=stream.ended,
                clean_end=stream.clean_end,
                agrees=agrees,
                matched=agrees and len(stream.body) == canonical.length,
                diverged_at=offset,
                diverged_tick=None if offset is None else tick_at[offset],
            )
        )
    return records
