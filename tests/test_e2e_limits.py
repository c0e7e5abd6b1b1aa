"""End to end: the limits of a real server, in one process and with two worker processes.

Every connection comes from 127.0.0.1, so the per-peer limit counts all of them. The
connection limits count the whole server in both modes: with worker processes a connection
counts from its accept in the listening process until the worker that runs it says it closed.
"""
from __future__ import annotations

import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.test_e2e_hostile import BINARY, WebSocketClient
from tests.support.clients import closed_by_server, still_open
from tests.support.server import (
    ServerProcess,
    joined,
    receive_all,
    send_stream,
    temporary_directory,
)

REPLAY = samples.read("8945286.scfareplay")
WS_LISTENING = re.compile(r"WebSocket listener on IPv4Address\(.*port=(\d+)\)")






class LimitsEndToEnd(SynchronousTestCase):
    workers = "1"

    def start(self, limits: dict, **sections) -> ServerProcess:
        settings = {"limits": limits, "replay": {"delay": 0.5, "grace_period": 0.5}, **sections}
        server = ServerProcess(temporary_directory(self), settings,
                               environment={"REPLAYSERVER_SERVER_WORKERS": self.workers}).start()
        self.addCleanup(server.kill)
        self.threads = ThreadPoolExecutor(max_workers=8)
        self.addCleanup(self.threads.shutdown)
        return server

    def test_connections_per_peer(self):
        server = self.start({"connections_per_peer": 4})
        # the start-up probe's connection may still be counted for a moment
        time.sleep(0.3)
        idle = [server.raw_connection() for _ in range(4)]
        time.sleep(0.3)
        self.assertEqual(closed_by_server(server.raw_connection()), b"")
        self.assertTrue(all(still_open(connection, 0.3) for connection in idle))
        for connection in idle:
            connection.close()
        time.sleep(0.3)
        writer = server.connect("P", 4001, "player")
        send_stream(writer, REPLAY)
        self.assertEqual(read_fafreplay(server.wait_for_file(4001)).scfa, REPLAY)
        self.assertIn("limit connections_per_peer reached", server.log())
        self.assertNotIn("Traceback", server.log())

    def test_connections_per_peer_counts_the_whole_server(self):
        server = self.start({"connections_per_peer": 6},
                            server={"websocket_listen": "tcp:0:interface=127.0.0.1"})
        ws_port = int(WS_LISTENING.search(server.log()).group(1))
        time.sleep(0.3)  # the start-up probe's connection may still be counted for a moment
        # Writers of games in both workers, a reader, a WebSocket writer, two idle connections.
        writers = [server.connect("P", game_id, "w") for game_id in (4101, 4102)]
        for writer in writers:
            writer.sendall(REPLAY[:5000])
        time.sleep(0.3)
        reader = self.threads.submit(receive_all, server.connect("G", 4101, "watcher"))
        websocket = WebSocketClient(ws_port)
        self.assertTrue(websocket.upgraded)
        websocket.send(BINARY, b"P/4103/ws\0" + REPLAY[:5000])
        idle = [server.raw_connection() for _ in range(2)]
        time.sleep(0.5)
        self.assertEqual(closed_by_server(server.raw_connection()), b"")
        self.assertFalse(WebSocketClient(ws_port).upgraded)
        self.assertTrue(all(still_open(connection, 0.3) for connection in idle))
        idle[0].close()
        time.sleep(0.3)
        idle.append(server.raw_connection())
        time.sleep(0.3)
        self.assertTrue(still_open(idle[-1], 0.3))
        self.assertEqual(closed_by_server(server.raw_connection()), b"")
        for writer in writers:
            send_stream(writer, REPLAY[5000:])
        websocket.send(BINARY, REPLAY[5000:])
        websocket.send(0x8, b"\x03\xe8")  # close 1000: a clean end
        self.assertEqual(joined(reader.result(timeout=30)), REPLAY)
        for game_id in (4101, 4102, 4103):
            self.assertEqual(read_fafreplay(server.wait_for_file(game_id)).scfa, REPLAY)
        websocket.close()
        for connection in idle:
            connection.close()
        # Everything closed: the peer may hold six connections again.
        time.sleep(0.5)
        again = [server.raw_connection() for _ in range(6)]
        time.sleep(0.3)
        self.assertTrue(all(still_open(connection, 0.3) for connection in again))
        self.assertEqual(closed_by_server(server.raw_connection()), b"")
        for connection in again:
            connection.close()
        self.assertEqual(server.log().count("limit connections_per_peer reached"), 4)
        self.assertNotIn("Traceback", server.log())

    def test_partial_header_timeout(self):
        server = self.start({"partial_header_timeout": 0.5})
        silent = server.raw_connection()
        partial = server.raw_connection()
        partial.sendall(b"P/4002/na")
        started = time.monotonic()
        self.assertEqual(closed_by_server(partial), b"")
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(still_open(silent, 0.3))
        silent.close()
        self.assertIn("connection header not finished after 0.5 s", server.log())

    def test_stream_bytes(self):
        server = self.start({"stream_bytes": 20000})
        writer = server.connect("P", 4003, "greedy")
        send_stream(writer, REPLAY, close=False)
        self.assertEqual(closed_by_server(writer), b"")
        saved = read_fafreplay(server.wait_for_file(4003)).scfa
        self.assertLessEqual(len(saved), 20000)
        self.assertEqual(saved, REPLAY[:len(saved)])
        self.assertGreater(len(saved), parse_header(REPLAY).size)
        self.assertIn("limit stream_bytes of 20000 bytes reached", server.log())

    def test_readers_and_writers_per_game(self):
        server = self.start({"readers_per_game": 1, "writers_per_game": 1})
        writer = server.connect("P", 4004, "player")
        writer.sendall(REPLAY[:5000])
        time.sleep(0.3)
        reader = self.threads.submit(receive_all, server.connect("G", 4004, "first"))
        time.sleep(0.3)
        self.assertEqual(closed_by_server(server.connect("G", 4004, "second")), b"")
        self.assertEqual(closed_by_server(server.connect("P", 4004, "second writer")), b"")
        send_stream(writer, REPLAY[5000:])
        self.assertEqual(joined(reader.result(timeout=30)), REPLAY)
        self.assertEqual(read_fafreplay(server.wait_for_file(4004)).scfa, REPLAY)

    def test_reader_that_stops_reading_is_dropped(self):
        server = self.start({"reader_stall_timeout": 1})
        header = REPLAY[:parse_header(REPLAY).size]
        body = bytes(range(256)) * (24 << 12)  # 24 MiB: more than any socket buffers hold
        writer = server.connect("P", 4005, "player")
        writer.sendall(header)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"G/4005/stalled\0")
        honest = self.threads.submit(receive_all, server.connect("G", 4005, "honest"))
        send_stream(writer, body, chunk=1 << 16)
        received = joined(honest.result(timeout=60))
        self.assertTrue(received == header + body, f"{len(received)} bytes")
        deadline = time.monotonic() + 15
        while "accepted nothing for 1 s" not in server.log():
            self.assertLess(time.monotonic(), deadline, server.log())
            time.sleep(0.1)
        stalled.close()


class LimitsWithWorkers(LimitsEndToEnd):
    """The same with two worker processes: the main process counts the connections it holds
    (header phase), the workers the writers and readers."""

    workers = "2"
