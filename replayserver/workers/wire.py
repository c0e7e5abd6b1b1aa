"""The channel between the listening process and a worker process: its frames and records.

With ``server.workers`` > 1 the main process listens, reads each connection's ``P/`` / ``G/``
header and passes the socket to the worker that owns the game (``game_id % count``); the
worker runs the game exactly as the single process does. Main and worker share one UNIX
stream socket (a socketpair made at spawn: fd 3 in the worker). Every message on it is a
frame: one type byte, a 4-byte big-endian payload length, the payload.

main -> worker: ``CONFIG`` (JSON of the checked configuration; always first), ``CONNECTION``
(one handed-off socket: the fd travels as SCM_RIGHTS ancillary data at or before the frame's
first byte), ``QUERY`` (JSON ``{"id": n, "what": ...}``).
worker -> main: ``ACK`` (one per ``CONNECTION``, in order: the worker owns the socket now),
``REPLY`` (JSON ``{"id": n, "result": ...}``).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

import attrs

from replayserver.accept.handshake import ConnectionHeader, ConnectionKind

CONFIG = b"K"
CONNECTION = b"C"
QUERY = b"Q"
ACK = b"A"
REPLY = b"R"

#: How a handed-off connection speaks: raw TCP or WebSocket (replayed from its first byte).
TCP = b"T"
WEBSOCKET = b"W"

_FRAME = struct.Struct("!cI")
_CONNECTION = struct.Struct("!ccQH")  # transport, kind, game id, name length
_KIND_CODES = {ConnectionKind.WRITER: b"P", ConnectionKind.READER: b"G"}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}

#: The descriptor of the UNIX socket to the main process in a worker.
CHANNEL_FD = 3

#: Largest payload accepted from the other end (a handed-off connection carries at most the
#: bytes read before its header was complete: a WebSocket message is at most 1 MiB).
MAX_PAYLOAD = 8 << 20


class WireError(Exception):
    """The other end sent something that is not a valid frame."""


def worker_count(setting: int | None) -> int:
    """Worker processes for ``server.workers`` (None = one per core); 0 or 1 = single process."""
    if setting is None:
        return os.cpu_count() or 1
    return setting


def worker_for(game_id: int, count: int) -> int:
    """The index of the worker that owns a game."""
    return game_id % count


def worker_spool(spool: str, index: int) -> str:
    """Worker ``index``'s spool directory: a crash of one worker touches only its games."""
    return os.path.join(spool, f"worker-{index}")


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value: Any) -> bytes:
    return frame(kind, json.dumps(value, separators=(",", ":")).encode("utf-8"))


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

    transport: bytes  # TCP or WEBSOCKET
    header: ConnectionHeader
    #: TCP: the bytes read after the header. WebSocket: every byte read since the accept
    #: (the worker replays the upgrade and the messages; its upgrade answer is not sent).
    data: bytes

    def encode(self) -> bytes:
        name = self.header.name.encode("utf-8")
        fixed = _CONNECTION.pack(
            self.transport, _KIND_CODES[self.header.kind], self.header.game_id, len(name)
        )
        return frame(CONNECTION, fixed + name + self.data)

    @classmethod
    def decode(cls, payload: bytes) -> HandedOff:
        if len(payload) < _CONNECTION.size:
            raise WireError("short connection record")
        transport, kind, game_id, name_size = _CONNECTION.unpack_from(payload)
        if transport not in (TCP, WEBSOCKET) or kind not in _KINDS:
            raise WireError(f"unknown connection record {transport!r} {kind!r}")
        name_end = _CONNECTION.size + name_size
        name = payload[_CONNECTION.size:name_end].decode("utf-8")
        header = ConnectionHeader(_KINDS[kind], game_id, name)
        return cls(transport, header, payload[name_end:])
