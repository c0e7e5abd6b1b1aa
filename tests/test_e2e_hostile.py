"""End to end: hostile WebSocket and header traffic beside an honest game.

While an honest writer streams a real replay to a TCP reader and a WebSocket reader, hostile
clients flood pings before their header, send oversized upgrade requests, oversized and text
messages, and many headers that never finish, over both listeners. The honest replay must
come out byte-exact (saved and at both readers), no worker may die (no "Worker N died" in the
log), the server must log no traceback (and no unhandled error: `ServerProcess.kill` checks),
and every connection's place in the connection count must be given back: afterwards one peer
can open exactly ``limits.connections_per_peer`` connections again.

The server's mode is the configuration's (two worker processes) unless the environment says
otherwise: the suite runs this file with ``REPLAYSERVER_SERVER_WORKERS`` at 2 and at 1. A game
whose writer sends a huge replay header is watched through ``/live/<id>`` meanwhile: the
answer (whatever its size) must not break the channel to its worker.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from replayserver.workers.recording import MAX_RECORDING
from tests.support import samples
from tests.support.clients import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    UPGRADE,
    client_frame,
    closed_by_server,
    still_open,
)
from tests.support.server import (
    ServerProcess,
    joined,
    receive_all,
    send_stream,
    temporary_directory,
)

REPLAY = samples.read("8945286.scfareplay")
HEADER_SIZE = parse_header(REPLAY).size
#: The same replay with a map path of 900 kB in its header.
HUGE_HEADER = REPLAY.replace(b"/maps/scca_coop_a02.v0017/SCCA_Coop_A02.scmap",
                             b"/maps/" + b"x" * 900_000 + b"/huge.scmap", 1)
HONEST, HUGE, HOSTILE = 8101, 8102, 8103
PER_PEER = 300
SETTINGS = {
    "server": {"workers": 2, "websocket_listen": "tcp:0:interface=127.0.0.1",
               "http_listen": "tcp:0:interface=127.0.0.1"},
    "replay": {"delay": 0.5, "grace_period": 1},
    "limits": {"partial_header_timeout": 1, "connections_per_peer": PER_PEER},
}
WS_LISTENING = re.compile(r"WebSocket listener on IPv4Address\(.*port=(\d+)\)")
HTTP_LISTENING = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")




class WebSocketClient:
    """A blocking WebSocket client on a plain socket, for what no library would send."""

    def __init__(self, port: int, upgrade: bytes = UPGRADE) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.socket.sendall(upgrade)
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            data = self.socket.recv(4096)
            if not data:
                break
            self._buffer += data
        self.answer, _, self._buffer = self._buffer.partition(b"\r\n\r\n")

    @property
    def upgraded(self) -> bool:
        return self.answer.startswith(b"HTTP/1.1 101")

    def send(self, opcode: int, payload: bytes) -> bool:
        """Send a frame; False if the server had closed the connection already."""
        try:
            self.socket.sendall(client_frame(opcode, payload))
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _read(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            try:
                data = self.socket.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self._buffer += data
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def receive(self) -> tuple[bytes, int | None]:
        """Binary payloads until the server closes, and its close code (None: no close)."""
        received = []
        while True:
            head = self._read(2)
            if head is None:
                return b"".join(received), None
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read(2) or b"\0\0")[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read(8) or b"\0" * 8)[0]
            payload = self._read(size)
            if payload is None:
                return b"".join(received), None
            if opcode == BINARY or opcode == 0:
                received.append(payload)
            elif opcode == CLOSE:
                self.send(CLOSE, payload[:2])
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return b"".join(received), code

    def closed_by_server(self) -> bool:
        """Whether the server ends the connection (within the socket's timeout)."""
        try:
            self.receive()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.socket.close()


def ws_reader(port: int, game_id: int) -> tuple[bytes, int | None]:
    client = WebSocketClient(port)
    try:
        client.send(BINARY, b"G/%d/ws-watcher\0" % game_id)
        return client.receive()
    finally:
        client.close()




# --- hostile clients: each returns whether the server closed it as it should ----------------

def ping_flood(port: int) -> bool:
    """Pings as fast as it can, without reading the pongs: dropped (in both modes)."""
    client = WebSocketClient(port)
    ping = client_frame(PING, b"p" * 125)
    try:
        for _ in range(2 * MAX_RECORDING // len(ping) // 100 + 1):
            client.socket.sendall(ping * 100)
    except (BrokenPipeError, ConnectionResetError):
        return client.upgraded
    return client.upgraded and client.closed_by_server()


def frame_flood(port: int, frame: bytes, bounded: bool) -> bool:
    """Frames that need no answer and carry no header byte (unsolicited pongs, empty binary
    messages), twice what the listening process of worker mode records before a header
    (``bounded``: the server closes the connection; a single process records nothing and
    lets the connection wait for its header)."""
    client = WebSocketClient(port)
    try:
        for _ in range(2 * MAX_RECORDING // len(frame) // 100 + 1):
            client.socket.sendall(frame * 100)
    except (BrokenPipeError, ConnectionResetError):
        return client.upgraded and bounded
    if not bounded:
        client.close()
        return client.upgraded
    return client.upgraded and client.closed_by_server()


def pings_then_text(port: int) -> bool:
    client = WebSocketClient(port)
    for _ in range(200):
        client.send(PING, b"p" * 125)
    client.send(BINARY, b"P/%d/pi" % HOSTILE)
    client.send(TEXT, b"ng\0")
    return client.upgraded and client.closed_by_server()


def oversized_upgrade(port: int) -> bool:
    upgrade = UPGRADE[:-2] + b"X-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    client = WebSocketClient(port, upgrade)
    return not client.upgraded and client.closed_by_server()


def oversized_message(port: int) -> bool:
    client = WebSocketClient(port)
    client.send(BINARY, b"P/%d/big\0" % HOSTILE + b"\0" * (1 << 20))
    return client.closed_by_server()


def partial_websocket_header(port: int) -> bool:
    client = WebSocketClient(port)
    client.send(BINARY, b"P/%d" % HOSTILE)
    return client.closed_by_server()  # partial_header_timeout


def partial_tcp_header(port: int) -> bool:
    connection = socket.create_connection(("127.0.0.1", port), timeout=20)
    connection.sendall(b"G/%d/wai" % HOSTILE)
    return closed_by_server(connection) is not None  # partial_header_timeout


def garbage(port: int) -> bool:
    connection = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        connection.sendall(bytes(range(256)) * 8)
    except (BrokenPipeError, ConnectionResetError):
        return True
    return closed_by_server(connection) is not None


def half_frame_then_reset(port: int) -> bool:
    client = WebSocketClient(port)
    client.socket.sendall(client_frame(BINARY, b"P/%d/cut\0" % HOSTILE + b"x" * 5000)[:3000])
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    return True


class HostileTrafficEndToEnd(SynchronousTestCase):
    def start(self) -> ServerProcess:
        #: Worker mode: the configuration's, unless the environment overrides it.
        self.workers = int(os.environ.get("REPLAYSERVER_SERVER_WORKERS", "2")) > 1
        server = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(server.kill)
        self.ws_port = int(WS_LISTENING.search(server.log()).group(1))
        self.http_port = int(HTTP_LISTENING.search(server.log()).group(1))
        return server

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def test_hostile_traffic_beside_an_honest_game(self):
        server = self.start()
        threads = ThreadPoolExecutor(max_workers=40)
        self.addCleanup(threads.shutdown)

        huge = server.connect("P", HUGE, "huge")
        huge.sendall(HUGE_HEADER[:len(HUGE_HEADER) // 2])
        writer = server.connect("P", HONEST, "honest")
        writer.sendall(REPLAY[:HEADER_SIZE + 1000])
        time.sleep(0.3)
        tcp_reader = threads.submit(receive_all, server.connect("G", HONEST, "tcp-watcher"))
        ws_watcher = threads.submit(ws_reader, self.ws_port, HONEST)
        time.sleep(0.3)
        rest = threads.submit(send_stream, writer, REPLAY[HEADER_SIZE + 1000:], 512, 0.01)
        huge_rest = threads.submit(send_stream, huge, HUGE_HEADER[len(HUGE_HEADER) // 2:],
                                   65536, close=False)

        hostile = [threads.submit(ping_flood, self.ws_port) for _ in range(3)]
        hostile += [threads.submit(frame_flood, self.ws_port, client_frame(PONG, b"p" * 125),
                                   self.workers) for _ in range(3)]
        hostile += [threads.submit(frame_flood, self.ws_port, client_frame(BINARY, b""),
                                   self.workers) for _ in range(2)]
        hostile += [threads.submit(pings_then_text, self.ws_port) for _ in range(5)]
        hostile += [threads.submit(oversized_upgrade, self.ws_port) for _ in range(5)]
        hostile += [threads.submit(oversized_message, self.ws_port) for _ in range(3)]
        hostile += [threads.submit(partial_websocket_header, self.ws_port) for _ in range(30)]
        hostile += [threads.submit(partial_tcp_header, server.port) for _ in range(30)]
        hostile += [threads.submit(garbage, server.port) for _ in range(10)]
        hostile += [threads.submit(half_frame_then_reset, self.ws_port) for _ in range(10)]
        # the game with the huge header is watched while everything else goes on
        huge_rest.result(timeout=60)
        for _ in range(20):
            status, body = self.get(f"/live/{HUGE}")
            self.assertEqual(status, 200, body[:300])
            self.assertEqual(json.loads(body)["id"], HUGE)
            self.assertEqual(self.get("/live")[0], 200)
            time.sleep(0.05)
        huge.close()

        self.assertEqual([done.result(timeout=60) for done in hostile], [True] * len(hostile))
        rest.result(timeout=60)
        self.assertTrue(joined(tcp_reader.result(timeout=60)) == REPLAY, "TCP reader differs")
        received, code = ws_watcher.result(timeout=60)
        self.assertTrue(received == REPLAY, f"WebSocket reader: {len(received)} bytes")
        self.assertEqual(code, 1000)
        saved = read_fafreplay(server.wait_for_file(HONEST, timeout=30)).scfa
        self.assertTrue(saved == REPLAY, f"saved {len(saved)} bytes of {len(REPLAY)}")
        self.assertTrue(read_fafreplay(server.wait_for_file(HUGE, timeout=30)).scfa
                        == HUGE_HEADER)

        # Every place in the connection count was given back.
        time.sleep(1.5)
        held = [server.raw_connection() for _ in range(PER_PEER)]
        self.addCleanup(lambda: [connection.close() for connection in held])
        time.sleep(0.5)
        self.assertIsNotNone(closed_by_server(server.raw_connection(), timeout=5))
        self.assertTrue(all(still_open(connection) for connection in held))

        log = server.log()
        self.assertIsNone(re.search(r"Worker \d+ (died|exited)", log), log[-3000:])
        self.assertNotIn("Traceback", log)
        if self.workers:  # the floods of pings, pongs and empty messages (the listening
            # process answers no ping: the worker answers them once it has the connection)
            lines = [line for line in log.splitlines()
                     if "before the end of the connection header" in line]
            self.assertEqual(len(lines), 8, "\n".join(lines))
        self.assertTrue(server.process.poll() is None)

