"""End to end, against ``twistd -n replayserver``: the WebSocket listener under hostile and slow
clients (docs/protocol.md, "The WebSocket variant").

The clients are raw sockets speaking just enough RFC 6455 by hand, so that they can do what a
WebSocket library will not: read slowly with a tiny receive buffer, stop half-way through the
upgrade request, send an oversized one. Run with ``REPLAYSERVER_SERVER_WORKERS`` = 2 and 1.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.websocket import MAX_UPGRADE_REQUEST
from replayserver.replay.container import read_fafreplay
from tests.support import samples
from tests.support.clients import BINARY, CLOSE, PING, TEXT, UPGRADE, client_frame
from tests.support.server import ServerProcess, send_stream, temporary_directory

LOCAL = "tcp:0:interface=127.0.0.1"
HTTP_LISTENING = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")
WS_LISTENING = re.compile(r"WebSocket listener on IPv4Address\(.*port=(\d+)\)")
BIG_REPLAY = samples.read("8604509.scfareplay")  # 2.9 MB
SMALL_REPLAY = samples.read("8945286.scfareplay")
#: One ping with the largest payload a control frame may carry; masked with a zero key (legal,
#: and the payload goes as it is), so that a flood is quick to build.
PING_FRAME = client_frame(PING, b"p" * 125)
#: Bytes of pings the flooder sends at most: every pong for them would be about as much.
FLOOD = 40 << 20
#: How much more memory the server may take while it is flooded (far less than the flood).
FLOOD_MEMORY = 12 << 20


class RawWebSocket:
    """A blocking WebSocket client socket, frames written and read by hand."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.pending = b""

    def close(self) -> None:
        self.sock.close()

    def upgrade(self) -> None:
        self.sock.sendall(UPGRADE)
        while b"\r\n\r\n" not in self.pending:
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError(f"closed during the upgrade: {self.pending!r}")
            self.pending += data
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        """One frame, masked with a random key (as clients must)."""
        self.sock.sendall(client_frame(opcode, payload, os.urandom(4)))

    def _frame(self) -> tuple[int, bytes] | None:
        """The next complete frame in ``pending`` (servers do not mask), or None."""
        data = self.pending
        if len(data) < 2:
            return None
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, start = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, start = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < start + length:
            return None
        self.pending = data[start + length:]
        return opcode, data[start:start + length]

    def read_until_close(self, chunk: int = 65536, pause: float = 0.0,
                         slow_from: int = 0) -> tuple[bytes, int | None]:
        """The binary payloads until the server's close frame (answered with a close 1000),
        and that frame's code (None when the connection ended without one). Once ``slow_from``
        payload bytes have arrived, each read of ``chunk`` bytes is followed by ``pause``."""
        body = []
        received = 0
        while True:
            frame = self._frame()
            while frame is not None:
                opcode, payload = frame
                if opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    try:
                        self.send(struct.pack("!H", 1000), CLOSE)
                    except OSError:
                        pass
                    return b"".join(body), code
                if opcode in (BINARY, 0):
                    body.append(payload)
                    received += len(payload)
                frame = self._frame()
            try:
                data = self.sock.recv(chunk)
            except ConnectionResetError:
                data = b""
            if not data:
                return b"".join(body), None
            self.pending += data
            if pause and received >= slow_from:
                time.sleep(pause)

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """The server ends the TCP connection within ``timeout`` (after anything it sends)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        return True


def process_ids(main: int) -> list[int]:
    """The server process and its children (the workers, in worker mode)."""
    children = []
    for task in os.listdir(f"/proc/{main}/task"):
        try:
            with open(f"/proc/{main}/task/{task}/children") as listing:
                children += [int(pid) for pid in listing.read().split()]
        except FileNotFoundError:
            pass
    return [main, *children]


def resident_bytes(pids: list[int]) -> int:
    """The summed VmRSS of processes (a process that is gone counts nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


class MemoryWatch(threading.Thread):
    """Samples the summed RSS of processes until stopped; keeps the largest figure."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = resident_bytes(pids)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.02):
            self.peak = max(self.peak, resident_bytes(self.pids))

    def stop(self) -> int:
        self._stopping.set()
        self.join()
        return self.peak


def ping_flood(sock: socket.socket, total: int) -> tuple[int, bool]:
    """Send pings until ``total`` bytes are sent or the server ends the connection; the bytes
    sent and whether the server ended it."""
    burst = PING_FRAME * ((256 << 10) // len(PING_FRAME))
    sent = 0
    while sent < total:
        try:
            sock.sendall(burst)
        except OSError:  # reset, or broken pipe
            return sent, True
        sent += len(burst)
    return sent, False


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; what the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        if data:
            connection.sendall(data)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


class WebSocketEndToEnd(SynchronousTestCase):
    def start(self, **settings) -> ServerProcess:
        settings.setdefault("server", {}).update(http_listen=LOCAL, websocket_listen=LOCAL)
        settings.setdefault("replay", {}).update(delay=0.5, grace_period=0.5)
        server = ServerProcess(temporary_directory(self), settings).start()
        self.addCleanup(server.kill)
        log = server.log()
        self.http_port = int(HTTP_LISTENING.search(log).group(1))
        self.ws_port = int(WS_LISTENING.search(log).group(1))
        self.server = server
        self.addCleanup(self.no_unhandled_errors)
        return server

    def no_unhandled_errors(self) -> None:
        log = self.server.log()
        for bad in ("Unhandled error", "Traceback"):
            self.assertNotIn(bad, log, log)

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics") as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def wait_for_metric(self, value: float, name: str, timeout: float = 15.0,
                        **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name, **labels) != value:
            if time.monotonic() > deadline:
                self.fail(f"{name}{labels} is {self.metric(name, **labels)}, not {value}\n"
                          f"{self.server.log()}")
            time.sleep(0.1)

    def game_with_raw_reader(self, game_id: int, replay: bytes, name: str
                             ) -> tuple[socket.socket, RawWebSocket]:
        """A game whose writer sent ``replay``'s first 4 KiB, and a reader of it on a raw
        WebSocket with a 4 KiB receive buffer (upgraded, its header sent)."""
        writer = self.server.connect("P", game_id, "player")
        writer.sendall(replay[:4096])
        self.wait_for_game(game_id)
        reader = RawWebSocket(self.ws_port, receive_buffer=4096)
        self.addCleanup(reader.close)
        reader.upgrade()
        reader.send(b"G/%d/%s\0" % (game_id, name.encode()))
        return writer, reader

    def wait_for_game(self, game_id: int) -> None:
        url = f"http://127.0.0.1:{self.http_port}/live/{game_id}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url) as response:
                    if json.load(response).get("id") == game_id:
                        return
            except urllib.error.HTTPError:
                pass
            self.assertLess(time.monotonic(), deadline, self.server.log())
            time.sleep(0.05)

    def test_slow_reader_gets_every_byte_then_a_clean_close(self):
        """A reader with a tiny receive buffer that reads its last bytes slowly (20 KB/s) has
        much left to take when the server has written everything and closes: it gets all of
        it, then the close."""
        server = self.start()
        game_id = 9101
        writer, reader = self.game_with_raw_reader(game_id, BIG_REPLAY, "slow")
        sending = threading.Thread(target=send_stream, args=(writer, BIG_REPLAY[4096:], 65536))
        sending.start()
        self.addCleanup(sending.join)
        started = time.monotonic()
        body, code = reader.read_until_close(chunk=1024, pause=0.05,
                                             slow_from=len(BIG_REPLAY) - (160 << 10))
        took = time.monotonic() - started
        self.assertEqual(len(body), len(BIG_REPLAY), f"after {took:.1f} s\n{server.log()}")
        self.assertEqual(body, BIG_REPLAY)
        self.assertEqual(code, 1000)
        self.assertTrue(reader.closed_by_server())
        self.wait_for_metric(2, "replayserver_served_connections_total", result="Success")
        self.assertRegex(server.log(), r"Reader 'slow' of game 9101 .*closed \(Success\)")

    def test_connections_count_before_the_upgrade(self):
        """Connections that never upgrade hold their places: the whole server is full."""
        self.start(limits={"connections_per_peer": 3})
        time.sleep(0.3)  # the start-up probe's connection may still be counted for a moment
        idle = [socket.create_connection(("127.0.0.1", self.ws_port)) for _ in range(3)]
        for connection in idle:
            self.addCleanup(connection.close)
        time.sleep(0.3)
        # over the limit, on either listener, before any upgrade or header
        self.assertEqual(raw_exchange(self.ws_port, b""), b"")
        self.assertEqual(raw_exchange(self.server.port, b""), b"")
        self.wait_for_metric(2, "replayserver_served_connections_total", result="Refused")
        self.assertEqual(self.metric("replayserver_limited_connections_total",
                                     limit="connections_per_peer"), 2)
        log = self.server.log()
        self.assertEqual(log.count("WebSocket connection from"), 1, log)
        self.assertIn("limit connections_per_peer reached", log)
        for connection in idle:
            connection.close()  # empty connections: silent
        time.sleep(0.5)
        client = RawWebSocket(self.ws_port)
        self.addCleanup(client.close)
        client.upgrade()
        self.assertEqual(self.server.log().count("WebSocket connection from"), 1)

    def test_upgrade_request_bounds(self):
        server = self.start(limits={"partial_header_timeout": 1})
        # too long: refused as soon as it is over the bound
        padding = b"X-Padding: " + b"a" * MAX_UPGRADE_REQUEST + b"\r\n"
        answer = raw_exchange(self.ws_port, UPGRADE[:-2] + padding)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        # too slow: closed after limits.partial_header_timeout
        started = time.monotonic()
        self.assertEqual(raw_exchange(self.ws_port, UPGRADE[:40]), b"")
        self.assertLess(time.monotonic() - started, 5)
        # not a WebSocket request at all
        answer = raw_exchange(self.ws_port, b"GET /\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 4"), answer)
        self.wait_for_metric(2, "replayserver_served_connections_total", result="Bad data")
        self.wait_for_metric(1, "replayserver_served_connections_total", result="Timeout")
        lines = [line for line in server.log().splitlines() if "WebSocket connection" in line]
        self.assertEqual(len(lines), 3, server.log())
        self.assertNotIn("\x1b", server.log())
        self.assertNotIn("dropping connection", server.log())  # autobahn's own lines

    def test_text_message_is_bad_data_and_the_game_goes_on(self):
        server = self.start()
        game_id = 9102
        keeper = server.connect("P", game_id, "keeper")
        self.wait_for_game(game_id)
        writer = RawWebSocket(self.ws_port)
        self.addCleanup(writer.close)
        writer.upgrade()
        writer.send(b"P/%d/texter\0" % game_id + SMALL_REPLAY[:2000])
        writer.send(b"hello", TEXT)
        _, code = writer.read_until_close()
        self.assertEqual(code, 1003)
        self.wait_for_metric(1, "replayserver_served_connections_total", result="Bad data")
        send_stream(keeper, SMALL_REPLAY)
        server.wait_for_file(game_id)
        self.assertEqual(self.metric("replayserver_served_connections_total",
                                     result="I/O error"), 0)

    def test_ping_flood_that_never_reads_is_dropped_and_memory_stays_bounded(self):
        """A client that floods pings with a tiny receive buffer and reads nothing: pongs are
        not buffered without bound, the flooder is dropped as bad data, and a game beside it
        is saved intact."""
        server = self.start()
        game_id = 9103
        # a reader of the game (in a worker, if any)
        writer, flooder = self.game_with_raw_reader(game_id, SMALL_REPLAY, "flooder")
        self.wait_for_metric(1, "replayserver_active_connections_count", category="reader")
        pids = process_ids(server.process.pid)
        baseline = resident_bytes(pids)
        watch = MemoryWatch(pids)
        watch.start()
        sent, dropped = ping_flood(flooder.sock, FLOOD)
        time.sleep(0.5)
        growth = watch.stop() - baseline
        figures = (f"{sent >> 10} KiB of pings sent; RSS of {len(pids)} process(es):"
                   f" {baseline >> 10} KiB, then up to {growth >> 10} KiB more")
        print(figures)
        self.assertTrue(dropped, figures)
        self.assertLess(growth, FLOOD_MEMORY, figures)
        self.wait_for_metric(1, "replayserver_served_connections_total", result="Bad data")
        log = server.log()
        self.assertEqual(len(re.findall(r"Reader 'flooder' .*closed \(Bad data; .*ping", log)),
                         1, log)
        send_stream(writer, SMALL_REPLAY[4096:], 65536)
        self.assertEqual(read_fafreplay(server.wait_for_file(game_id)).scfa, SMALL_REPLAY)
