"""The channel between the listening process and a worker process: its frames and records.

With ``server.workers`` > 1 the main process listens, reads each connection's ``P/`` / ``G/``
header and passes the socket to the worker that owns the game (``game_id % count``); the
worker runs the game exactly as the single process does (docs/operations.md, "Worker
processes"). Main and worker share one UNIX stream socket (a socketpair made at spawn: fd 3 in
the worker). Every message on it is a frame: one type byte, a 4-byte big-endian payload
length, the payload.

main -> worker: ``CONFIG`` (JSON of the checked configuration; always first), ``CONNECTION``
(one handed-off socket, a `HandedOff` record: the fd travels as SCM_RIGHTS ancillary data at
or before the frame's first byte), ``QUERY`` (JSON ``{"id": n, "what": ...}``).
worker -> main: ``ACK`` (one per ``CONNECTION``, in order: the worker owns the socket now),
``CLOSED`` (the 8-byte id of a handed-off connection that has ended: the main process gives
its place in the connection count back), ``REPLY`` (JSON ``{"id": n, "result": ...}``, or
``{"id": n, "error": "..."}`` when the question could not be answered).

Nothing a client sends can make a frame invalid or too large: a TCP connection's record holds
its header and the bytes of one read after it, a WebSocket connection's recording is bounded
(`replayserver.workers.recording`), and a worker answers with an error what would not fit
in a frame. A `WireError` therefore means a broken process, and its channel is dropped.

The worker's log events travel apart from the channel, as JSON lines on a pipe (fd 4 in the
worker, `replayserver.workers.logs`).
"""
from __future__ import annotations

import json
import struct
from typing import Any

import attrs

from replayserver.accept.handshake import ConnectionHeader, ConnectionKind

CONFIG = b"K"
CONNECTION = b"C"
QUERY = b"Q"
ACK = b"A"
CLOSED = b"D"
REPLY = b"R"

#: How a handed-off connection speaks: raw TCP or WebSocket (replayed from its first byte).
TCP = b"T"
WEBSOCKET = b"W"

_FRAME = struct.Struct("!cI")
_CONNECTION = struct.Struct("!QccQH")  # connection id, transport, kind, game id, name length
_CONNECTION_ID = struct.Struct("!Q")
_KIND_CODES = {ConnectionKind.WRITER: b"P", ConnectionKind.READER: b"G"}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}

#: The descriptor of the UNIX socket to the main process in a worker.
CHANNEL_FD = 3
#: The descriptor of the pipe a worker writes its log events to.
LOG_FD = 4

#: Largest payload of a frame. Far above what a legitimate frame needs: a handed-off
#: connection carries at most about 1.1 MiB (a WebSocket recording: the upgrade request and
#: at most one 1 MiB message, `replayserver.workers.recording.MAX_RECORDING`); a reply that
#: would be larger is answered with an error instead.
MAX_PAYLOAD = 8 << 20


class WireError(Exception):
    """The other end sent something that is not a valid frame."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"a frame of {len(payload)} bytes does not fit the channel")
    return _FRAME.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value: Any) -> bytes:
    return frame(kind, json.dumps(value, separators=(",", ":")).encode("utf-8"))


def closed_frame(connection_id: int) -> bytes:
    """``CLOSED``: the handed-off connection ``connection_id`` has ended."""
    return frame(CLOSED, _CONNECTION_ID.pack(connection_id))


def closed_id(payload: bytes) -> int:
    """The connection id of a ``CLOSED`` frame's payload."""
    if len(payload) != _CONNECTION_ID.size:
        raise WireError(f"closed record of {len(payload)} bytes")
    connection_id: int = _CONNECTION_ID.unpack(payload)[0]
    return connection_id


def json_payload(payload: bytes) -> dict[str, Any]:
    """A JSON object payload (``CONFIG``, ``QUERY``, ``REPLY``); anything else is a WireError."""
    try:
        value = json.loads(payload)
    except ValueError as error:  # UnicodeDecodeError included
        raise WireError(f"bad JSON payload: {error}") from None
    if not isinstance(value, dict):
        raise WireError("JSON payload is not an object")
    return value


class FrameReader:
    """Splits a byte stream into ``(type, payload)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        while len(buffer) - start >= _FRAME.size:
            kind, size = _FRAME.unpack_from(buffer, start)
            if size > MAX_PAYLOAD:
                raise WireError(f"frame of {size} bytes")
            end = start + _FRAME.size + size
            if len(buffer) < end:
                break
            frames.append((kind, bytes(buffer[start + _FRAME.size:end])))
            start = end
        del buffer[:start]
        return frames


@attrs.frozen
class HandedOff:
    """What travels with a handed-off socket."""

    #: Names the connection in ``CLOSED``: unique among the connections of one main process.
    connection_id: int
    transport: bytes  # TCP or WEBSOCKET
    header: ConnectionHeader
    #: TCP: the bytes read after the header. WebSocket: every byte read since the accept
    #: (the worker replays the upgrade and the messages; its upgrade answer is not sent).
    data: bytes

    def encode(self) -> bytes:
        name = self.header.name.encode("utf-8")
        fixed = _CONNECTION.pack(self.connection_id, self.transport,
                                 _KIND_CODES[self.header.kind], self.header.game_id, len(name))
        return frame(CONNECTION, fixed + name + self.data)

    @classmethod
    def decode(cls, payload: bytes) -> HandedOff:
        if len(payload) < _CONNECTION.size:
            raise WireError("short connection record")
        connection_id, transport, kind, game_id, name_size = _CONNECTION.unpack_from(payload)
        if transport not in (TCP, WEBSOCKET) or kind not in _KINDS:
            raise WireError(f"unknown connection record {transport!r} {kind!r}")
        name_end = _CONNECTION.size + name_size
        if len(payload) < name_end:
            raise WireError("short connection record")
        try:
            name = payload[_CONNECTION.size:name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("connection name is not UTF-8") from None
        header = ConnectionHeader(_KINDS[kind], game_id, name)
        return cls(connection_id, transport, header, payload[name_end:])
