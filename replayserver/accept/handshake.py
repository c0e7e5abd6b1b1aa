"""Incremental parser of the connection header `P/<game_id>/<name>\\0` (writer) or `G/...` (reader).

Rules (docs/protocol.md): the first two bytes are `P/` or `G/`; then at most 1024 bytes that end
with a NUL; the text before the NUL splits on its first `/` into a decimal unsigned 64-bit game
id and a name, both valid UTF-8.  A connection that ends before two bytes is an empty connection,
which is not an error.
"""
import enum

import attrs

PREFIX_SIZE = 2
#: Longest `<game_id>/<name>\0` accepted, NUL included.
MAX_HEADER_TEXT = 1024
MAX_GAME_ID = 2**64 - 1
_ASCII_DIGITS = frozenset(b"0123456789")


class ConnectionKind(enum.Enum):
    WRITER = "writer"
    READER = "reader"


_KINDS = {b"P/": ConnectionKind.WRITER, b"G/": ConnectionKind.READER}


class HandshakeError(Exception):
    """The connection header is bad data; the message says why."""


@attrs.frozen
class ConnectionHeader:
    kind: ConnectionKind
    game_id: int
    name: str


class HandshakeParser:
    """Feed it the connection's first bytes until it returns a `ConnectionHeader`.

    It keeps at most the prefix and 1024 header bytes; bytes after the NUL are in `leftover`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = PREFIX_SIZE  # bytes of the buffer already known to hold no NUL
        self._kind: ConnectionKind | None = None
        self.leftover = b""

    @property
    def empty(self) -> bool:
        """Fewer than two bytes arrived: an empty connection if it ends now."""
        return len(self._buffer) < PREFIX_SIZE

    def feed(self, data: bytes) -> ConnectionHeader | None:
        """Add bytes; the header once complete, else None.  Raises `HandshakeError`."""
        buffer = self._buffer
        buffer += data
        if self._kind is None:
            if len(buffer) < PREFIX_SIZE:
                return None
            prefix = bytes(buffer[:PREFIX_SIZE])
            if prefix not in _KINDS:
                raise HandshakeError(f"unknown connection type {prefix!r}")
            self._kind = _KINDS[prefix]
        end = buffer.find(b"\0", self._searched, PREFIX_SIZE + MAX_HEADER_TEXT)
        if end < 0:
            if len(buffer) >= PREFIX_SIZE + MAX_HEADER_TEXT:
                raise HandshakeError(f"no NUL within {MAX_HEADER_TEXT} header bytes")
            self._searched = len(buffer)
            return None
        self.leftover = bytes(buffer[end + 1:])
        header = _parse_text(self._kind, bytes(buffer[PREFIX_SIZE:end]))
        self._buffer = bytearray()
        return header

    def end(self) -> None:
        """The connection ended before the header was complete.

        Returns quietly for an empty connection; raises `HandshakeError` otherwise.
        """
        if not self.empty:
            raise HandshakeError("connection closed before the end of the header")


def _parse_text(kind: ConnectionKind, text: bytes) -> ConnectionHeader:
    game_id_bytes, slash, name_bytes = text.partition(b"/")
    if not slash:
        raise HandshakeError("no '/' between game id and name")
    if not game_id_bytes or not _ASCII_DIGITS.issuperset(game_id_bytes):
        raise HandshakeError(f"game id {game_id_bytes[:32]!r} is not a decimal unsigned integer")
    game_id = int(game_id_bytes)
    if game_id > MAX_GAME_ID:
        raise HandshakeError("game id does not fit 64 bits")
    try:
        name = name_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HandshakeError(f"name is not valid UTF-8 (at byte {error.start})") from None
    return ConnectionHeader(kind, game_id, name)
