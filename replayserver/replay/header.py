"""The SCFA replay header: an incremental parser and the decoded ReplayHeader.

The header has no length field; its end is found by parsing it field by field
(docs/replay-format.md). HeaderParser is a resumable step machine: a generator walks the fields
and, whenever the bytes it needs are not buffered yet, yields what it is waiting for (a byte
count, or a NUL-terminated string). ``feed`` appends the new bytes and resumes the generator only
once that request can be met, and a NUL search resumes where the previous one stopped, so any
chunking (even one byte at a time) costs time linear in the header size. A header is capped at
MAX_HEADER_SIZE bytes.

Strings are decoded as UTF-8 with ``errors="replace"``; Lua values as described in lua.py, all
the Lua blobs of one header (mods, scenario, every army) sharing one LuaBudget of values.
"""
from collections.abc import Generator
from pathlib import PurePosixPath

import attrs

from replayserver.replay.errors import HeaderError
from replayserver.replay.lua import LuaBudget, LuaTable, LuaValue, decode_lua

MAX_HEADER_SIZE = 1 << 20

_GAME_VERSION_END = b"\r\n\0"
_MAP_PATH_END = b"\r\n\x1a\0"
_NO_SOURCE = 255
_NUL_STRING = -1  # request: a NUL-terminated string at the parse position
_PIECE = 1 << 16  # feed buffers big chunks this much at a time


@attrs.frozen
class Mod:
    """One sim mod listed in the header."""

    name: str
    uid: str
    version: int | float | str | None  # as in the mod's Lua table; integral numbers as int


@attrs.frozen
class CommandSource:
    """A client that sends commands (player or observer), in header order."""

    name: str
    timeouts: int  # remaining timeouts (0xFFFFFFFF when unlimited), not a player id


@attrs.frozen
class Army:
    """One army slot: ``options`` is its Lua player-options table (PlayerName, Team, ...)."""

    index: int  # position in the header's army list
    options: LuaTable
    source: int | None  # index into ``sources``; None for AI and civilian armies (255)


@attrs.frozen
class ReplayHeader:
    """Everything the SCFA header says, decoded."""

    size: int
    game_version: str
    replay_version: str
    map_path: str
    mods: tuple[Mod, ...]
    scenario: LuaTable
    sources: tuple[CommandSource, ...]
    cheats: bool
    armies: tuple[Army, ...]
    seed: int

    @property
    def options(self) -> LuaTable:
        """The lobby options (the scenario's ``Options`` table), or {}."""
        options = self.scenario.get("Options")
        return options if isinstance(options, dict) else {}

    @property
    def map_name(self) -> str:
        """FAF's map name: the map's folder (else file stem), lower-cased ("scmp_020")."""
        path = PurePosixPath(self.map_path.replace("\\", "/"))
        name = path.parent.name if len(path.parts) > 2 else path.stem
        return (name or path.stem).lower()

    @property
    def victory_condition(self) -> str | None:
        """The ``Victory`` option ("demoralization", "sandbox", ...), or None."""
        victory = self.options.get("Victory")
        return None if victory is None else str(victory)

    @property
    def players(self) -> tuple[Army, ...]:
        """The human armies."""
        return tuple(army for army in self.armies if army.options.get("Human") is True)


class HeaderParser:
    """Parses an SCFA header fed in chunks of any size.

    ``feed`` returns None while more bytes are needed and the ReplayHeader once complete; then
    ``header``, ``raw`` (the header bytes exactly) and ``excess`` (bytes fed beyond the header:
    the start of the body) are set. Bad bytes raise HeaderError (and so does every later call).
    ``lua_budget`` counts the Lua values decoded so far (see lua.py).
    """

    def __init__(self) -> None:
        self.header: ReplayHeader | None = None
        self.raw: bytes | None = None
        self._excess: bytes | None = None
        self._excess_parts: tuple[bytes | bytearray, bytes] | None = None
        self.lua_budget = LuaBudget()
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf
        self._nul_scan = 0  # where the pending NUL search resumes
        self._field = "game version"
        self._error: HeaderError | None = None
        self._steps = self._parse()
        self._request = next(self._steps)

    def feed(self, data: bytes) -> ReplayHeader | None:
        """Add bytes; return the header once complete, else None. Raises HeaderError."""
        if self.header is not None:
            raise RuntimeError("the header is already complete; feed the body elsewhere")
        if self._error is not None:
            raise self._error
        # Buffer a big chunk piece by piece so that the body behind the header is not copied.
        for start in range(0, len(data), _PIECE):
            self._buf += data[start : start + _PIECE]
            try:
                header = self._advance()
            except HeaderError as error:
                self._error = error
                raise
            if header is not None:
                self._excess_parts = (self._buf[header.size :], data[start + _PIECE :])
                self._buf = bytearray()
                return header
        return None

    @property
    def excess(self) -> bytes | None:
        """Bytes fed beyond the header (the beginning of the body), once complete."""
        if self._excess_parts is not None:
            self._excess = b"".join(self._excess_parts)
            self._excess_parts = None
        return self._excess

    def end(self) -> ReplayHeader:
        """The stream ended: the header if it is complete, else a HeaderError."""
        if self.header is not None:
            return self.header
        if self._error is None:
            self._error = HeaderError(
                "stream ended inside the header", self._field, len(self._buf)
            )
        raise self._error

    def _advance(self) -> ReplayHeader | None:
        buf = self._buf
        while True:
            request = self._request
            if request == _NUL_STRING:
                nul = buf.find(b"\0", self._nul_scan)
                if nul < 0:
                    self._nul_scan = len(buf)
                    break
            elif self._pos + request > len(buf):
                if self._pos + request > MAX_HEADER_SIZE:
                    raise HeaderError(
                        f"needs {request} bytes, beyond the {MAX_HEADER_SIZE}-byte header cap",
                        self._field,
                        self._pos,
                    )
                break
            try:
                self._request = self._steps.send(None)
            except StopIteration as done:
                self.header = done.value
                self.raw = bytes(buf[: self.header.size])
                return self.header
        if len(buf) > MAX_HEADER_SIZE:
            raise HeaderError(
                f"header longer than {MAX_HEADER_SIZE} bytes", self._field, MAX_HEADER_SIZE
            )
        return None

    # Steps: each helper yields its request until the bytes are buffered, then consumes them.

    def _take(self, field: str, size: int) -> Generator[int, None, int]:
        self._field = field
        if self._pos + size > len(self._buf):
            yield size
        start = self._pos
        self._pos += size
        return start

    def _uint(self, field: str, size: int) -> Generator[int, None, int]:
        start = yield from self._take(field, size)
        return int.from_bytes(self._buf[start : start + size], "little")

    def _string(self, field: str) -> Generator[int, None, str]:
        self._field = field
        nul = self._buf.find(b"\0", self._pos)
        if nul < 0:
            self._nul_scan = len(self._buf)
            yield _NUL_STRING
            nul = self._buf.find(b"\0", self._nul_scan)
        text = bytes(self._buf[self._pos : nul]).decode("utf-8", errors="replace")
        self._pos = nul + 1
        return text

    def _literal(self, field: str, expected: bytes) -> Generator[int, None, None]:
        start = yield from self._take(field, len(expected))
        if self._buf[start : self._pos] != expected:
            raise HeaderError(f"expected {expected!r}", field, start)

    def _lua_blob(self, field: str) -> Generator[int, None, LuaValue]:
        size = yield from self._uint(f"{field} size", 4)
        start = yield from self._take(field, size)
        value, end = decode_lua(self._buf, start, self._pos, field, self.lua_budget)
        # The size prefix only bounds the value: the next field starts where the value ends,
        # as the game's own reader and faf-replay-parser read it (a corrupt size field then
        # shows up at the field that follows, as in 1418712.scfareplay).
        self._pos = end
        return value

    def _parse(self) -> Generator[int, None, ReplayHeader]:
        game_version = yield from self._string("game version")
        yield from self._literal("game version terminator", _GAME_VERSION_END)
        map_start = self._pos
        replay_version, newline, map_path = (yield from self._string("map path")).partition(
            "\r\n"
        )
        if not newline:
            raise HeaderError("no CR LF after the replay version", "map path", map_start)
        yield from self._literal("map path terminator", _MAP_PATH_END)
        mods = yield from self._lua_blob("mods")
        scenario = yield from self._lua_blob("scenario")
        sources = []
        for index in range((yield from self._uint("source count", 1))):
            name = yield from self._string(f"source {index} name")
            timeouts = yield from self._uint(f"source {index} timeouts", 4)
            sources.append(CommandSource(name, timeouts))
        cheats = (yield from self._uint("cheats", 1)) != 0
        armies = []
        for index in range((yield from self._uint("army count", 1))):
            options = yield from self._lua_blob(f"army {index}")
            source = yield from self._uint(f"army {index} source", 1)
            if source != _NO_SOURCE:
                yield from self._take(f"army {index} source extra byte", 1)
            armies.append(
                Army(index, _table(options), None if source == _NO_SOURCE else source)
            )
        seed = yield from self._uint("seed", 4)
        return ReplayHeader(
            size=self._pos,
            game_version=game_version,
            replay_version=replay_version,
            map_path=map_path,
            mods=_mods(mods),
            scenario=_table(scenario),
            sources=tuple(sources),
            cheats=cheats,
            armies=tuple(armies),
            seed=seed,
        )


def parse_header(data: bytes) -> ReplayHeader:
    """Parse the header at the start of ``data``; HeaderError if bad or incomplete."""
    parser = HeaderParser()
    header = parser.feed(data)
    return header if header is not None else parser.end()


def _table(value: LuaValue) -> LuaTable:
    return value if isinstance(value, dict) else {}


def _mods(value: LuaValue) -> tuple[Mod, ...]:
    """The mods table (keyed 1.0, 2.0, ... in the game's files) as Mod values in key order."""
    entries = _table(value)
    numbers = sorted(key for key in entries if isinstance(key, float))
    keys = numbers if len(numbers) == len(entries) else list(entries)
    return tuple(
        Mod(_text(entry.get("name")), _text(entry.get("uid")), _number(entry.get("version")))
        for entry in (entries[key] for key in keys)
        if isinstance(entry, dict)
    )


def _text(value: LuaValue) -> str:
    return "" if value is None else str(value)


def _number(value: LuaValue) -> int | float | str | None:
    """A mod version: integral numbers as int, a table (not a version at all) as None."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if isinstance(value, dict) else value
