"""The SCFA replay body: an incremental frame scanner (ticks, command counts, leavers, desyncs).

A body is a sequence of frames: u8 type, u16 length including these 3 bytes, payload
(docs/replay-format.md). Only four types are looked into: Advance (ticks), SetCommandSource and
CommandSourceTerminated (who left) and VerifyChecksum (desyncs); the others are only counted.

Desync detection follows faf-replay-parser 0.6.0 exactly (found by experiment): the scanner
remembers a checksum and the checksum tick it is for. A VerifyChecksum for a later checksum
tick replaces it; one for the same (or an earlier) checksum tick whose digest differs is a
desync, recorded with its checksum tick and the current sim tick, and does not replace the
remembered checksum. Each conflicting source counts, so a checksum tick can be reported several
times. (Sources send their checksums in tick order, so "earlier" does not happen in practice.)
The ticks of the first MAX_DESYNC_TICKS desyncs are kept; after that they are only counted, so
a body of conflicting checksums cannot grow a scanner by an entry per 23-byte frame (the real
desynced sample has 268).
"""
import re

from replayserver.replay.errors import BodyError

COMMAND_NAMES = (
    "Advance",
    "SetCommandSource",
    "CommandSourceTerminated",
    "VerifyChecksum",
    "RequestPause",
    "Resume",
    "SingleStep",
    "CreateUnit",
    "CreateProp",
    "DestroyEntity",
    "WarpEntity",
    "ProcessInfoPair",
    "IssueCommand",
    "IssueFactoryCommand",
    "IncreaseCommandCount",
    "DecreaseCommandCount",
    "SetCommandTarget",
    "SetCommandType",
    "SetCommandCells",
    "RemoveCommandFromQueue",
    "DebugCommand",
    "ExecuteLuaInSim",
    "LuaSimCallback",
    "EndGame",
)
_FRAME_HEADER = 3
_ADVANCE_ONE = b"\x00\x07\x00\x01\x00\x00\x00"  # Advance by one tick
# A run of whole SetCommandSource (length 4) and one-tick Advance frames. Inside such a run
# _ADVANCE_ONE occurs only at frame starts (no overlap of the two frames can spell it), so
# bytes.count gives the number of Advance frames, and the rest of the run is 4-byte frames.
_RUN = re.compile(
    rb"(?:(?:\x01\x04\x00.)++|" + re.escape(_ADVANCE_ONE) + rb")++", re.DOTALL
)  # possessive: no backtracking state is kept, which makes the match about twice as fast
MAX_DESYNC_TICKS = 10_000
_UNCHANGED = 0  # no SetCommandSource in the buffer so far (never a source byte's position)


class BodyScanner:
    """Scans body bytes fed in chunks of any size; a partial frame waits for the next chunk.

    Attributes: ``ticks`` (sum of Advance), ``offset`` (end of the last whole frame, from the
    start of the body), ``command_counts`` (frames per type, indexed by type), ``left_sources``
    (command sources that sent CommandSourceTerminated, in order), ``desync_tick`` (sim tick of
    the first desync, or None), ``desync_checksum_tick`` (its checksum tick, or None),
    ``desynced_checksum_ticks`` and ``desync_ticks`` (checksum tick and sim tick of each
    desync, in order, the first MAX_DESYNC_TICKS of them), ``desyncs`` (how many desyncs in
    all). An invalid frame raises BodyError with its offset in the body.
    """

    def __init__(self) -> None:
        self.ticks = 0
        self.offset = 0
        self.command_counts = [0] * len(COMMAND_NAMES)
        self.left_sources: list[int] = []
        self.desync_tick: int | None = None
        self.desync_checksum_tick: int | None = None
        self.desynced_checksum_ticks: list[int] = []
        self.desync_ticks: list[int] = []
        self.desyncs = 0
        self._source = 0  # the current command source (SetCommandSource)
        self._checksum = b""
        self._checksum_tick = -1  # no checksum yet: any tick is later
        self._pending = bytearray()  # the start of a frame that is not whole yet
        self._needed = 0  # bytes _pending must hold before it is worth scanning again
        self._error: BodyError | None = None

    def feed(self, data: bytes) -> None:
        """Scan more body bytes. Raises BodyError (and so does every later call)."""
        if self._error is not None:
            raise self._error
        if not isinstance(data, bytes):
            data = bytes(data)  # bytearray or memoryview
        if self._pending:
            self._pending += data
            if len(self._pending) < self._needed:
                return
            data = bytes(self._pending)
            self._pending.clear()
        try:
            end = self._scan(data)
        except BodyError as error:
            self._error = error
            raise
        if end < len(data):
            self._pending += data[end:]
            rest = self._pending
            self._needed = (
                rest[1] | rest[2] << 8 if len(rest) >= _FRAME_HEADER else _FRAME_HEADER
            )

    def _scan(self, buf: bytes) -> int:
        """Scan the whole frames of ``buf`` (which starts at a frame); return where they end.

        This runs once per frame, so it is one loop over local variables. Runs of the two most
        common frames (SetCommandSource, Advance of one tick: one game tick of
        each source is a run) are matched by a regular expression, in C, and counted from
        the run's length; everything else is read frame by frame.
        """
        base = self.offset
        ticks = self.ticks
        counts = self.command_counts
        checksum = self._checksum
        checksum_tick = self._checksum_tick
        match_run = _RUN.match
        count = buf.count
        source_at = _UNCHANGED  # where the current source byte is in buf, if it changed
        size = len(buf)
        last_start = size - _FRAME_HEADER
        pos = 0
        try:
            while pos <= last_start:
                kind = buf[pos]
                if kind < 2:
                    run = match_run(buf, pos)
                    if run is not None:
                        end = run.end()
                        advances = count(_ADVANCE_ONE, pos, end)
                        ticks += advances
                        counts[0] += advances
                        sources = (end - pos - 7 * advances) >> 2
                        if sources:
                            counts[1] += sources
                            source_at = -end  # resolved by _source() when needed
                        pos = end
                        continue
                length = buf[pos + 1] | buf[pos + 2] << 8
                end = pos + length
                if end > size:
                    break
                if kind > 3:
                    if length < _FRAME_HEADER:
                        raise BodyError(f"frame length {length} below 3", base + pos)
                    counts[kind] += 1  # IndexError for a type above 23
                    pos = end
                    continue
                if kind == 1:
                    if length < 4:
                        raise BodyError("SetCommandSource frame too short", base + pos)
                    source_at = pos + 3
                elif kind == 0:
                    if length < 7:
                        raise BodyError("Advance frame too short", base + pos)
                    ticks += int.from_bytes(buf[pos + 3 : pos + 7], "little")
                elif length < _FRAME_HEADER:
                    raise BodyError(f"frame length {length} below 3", base + pos)
                elif kind == 3:
                    if length < 23:
                        raise BodyError("VerifyChecksum frame too short", base + pos)
                    digest = buf[pos + 3 : pos + 19]
                    tick = int.from_bytes(buf[pos + 19 : pos + 23], "little")
                    if tick > checksum_tick:
                        checksum = digest
                        checksum_tick = tick
                    elif digest != checksum:
                        self._desync(tick, ticks)
                elif kind == 2:
                    if source_at != _UNCHANGED:
                        self._source = _source(buf, source_at)
                        source_at = _UNCHANGED
                    if self._source not in self.left_sources:
                        self.left_sources.append(self._source)
                counts[kind] += 1  # IndexError for a type above 23
                pos = end
        except IndexError:
            raise BodyError(f"unknown frame type {buf[pos]}", base + pos) from None
        finally:
            if source_at != _UNCHANGED:
                self._source = _source(buf, source_at)
            self.ticks = ticks
            self.offset = base + pos
            self._checksum = checksum
            self._checksum_tick = checksum_tick
        return pos

    def _desync(self, checksum_tick: int, tick: int) -> None:
        if self.desync_tick is None:
            self.desync_tick = tick
            self.desync_checksum_tick = checksum_tick
        self.desyncs += 1
        if len(self.desync_ticks) < MAX_DESYNC_TICKS:
            self.desynced_checksum_ticks.append(checksum_tick)
            self.desync_ticks.append(tick)


def _source(buf: bytes, source_at: int) -> int:
    """The current source: the byte at ``source_at``, or, when ``source_at`` is ``-end`` of a
    run, the payload of the run's last SetCommandSource (found behind its trailing Advances;
    a SetCommandSource frame cannot end like an Advance one)."""
    if source_at > 0:
        return buf[source_at]
    end = -source_at
    while buf[end - 7 : end] == _ADVANCE_ONE:
        end -= 7
    return buf[end - 1]


def scan_body(data: bytes) -> BodyScanner:
    """Scan a whole body; a partial frame at the end is left out (see ``offset``)."""
    scanner = BodyScanner()
    scanner.feed(data)
    return scanner
