"""Plain-socket clients for what no library would send: raw WebSocket frames, and checks of
whether the server closed a connection."""
from __future__ import annotations

import socket
import struct

#: A WebSocket upgrade request (any path: the server ignores it).
UPGRADE = (b"GET /replay HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
#: WebSocket opcodes.
BINARY, TEXT, CLOSE, PING, PONG = 0x2, 0x1, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", key: bytes = b"\0\0\0\0") -> bytes:
    """A client's WebSocket frame, masked with ``key`` (the zero key, by default: the payload
    goes as it is)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def closed_by_server(connection: socket.socket, timeout: float = 20.0) -> bytes | None:
    """What the server sent before it closed the connection (read to the end), or None if it
    kept it open for ``timeout`` seconds. The connection is closed afterwards."""
    connection.settimeout(timeout)
    received = b""
    try:
        while True:
            piece = connection.recv(65536)
            if not piece:
                return received
            received += piece
    except ConnectionResetError:
        return received
    except TimeoutError:
        return None
    finally:
        connection.close()


def still_open(connection: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server has neither closed the connection nor sent anything within
    ``wait`` seconds (0: without waiting)."""
    timeout = connection.gettimeout()
    connection.settimeout(wait)
    try:
        return connection.recv(1) != b""
    except (BlockingIOError, TimeoutError):
        return True
    except ConnectionResetError:
        return False
    finally:
        connection.settimeout(timeout)
