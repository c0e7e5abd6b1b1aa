"""The hand-off mechanism with real worker processes and real sockets on 127.0.0.1.

The workers run `EchoWorker` (built by `build_echo` in the worker process): each handed-off
connection first gets one line naming the worker, the connection kind, game id and name,
then every byte it sends back, and ``bye`` when its worker stops. The main side is the real
`ConnectionFactory` routed by the `Dispatcher`, and the `WorkerPool`, on this test's reactor.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from replayserver.accept.handshake import ConnectionHeader
from replayserver.accept.protocol import ConnectionFactory
from replayserver.deadlines import Deadlines
from replayserver.limits import PeerSlot
from replayserver.metrics import Metrics
from replayserver.workers.handoff import Dispatcher
from replayserver.workers.recording import RecordingWebSocketFactory
from replayserver.workers.supervisor import WorkerPool
from replayserver.workers.wire import worker_for
from tests.support.httpsink import websocket_connect

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNT = 2


class EchoProtocol(Protocol):
    def __init__(self, worker: EchoWorker, header: ConnectionHeader) -> None:
        self._worker = worker
        self._header = header

    def connectionMade(self) -> None:
        self._worker.open.add(self)
        h = self._header
        self.transport.write(
            f"worker {self._worker.index} pid {os.getpid()} {h.kind.value} {h.game_id} "
            f"{h.name}\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason) -> None:
        self._worker.open.discard(self)


def echo_factory(worker: EchoWorker) -> ConnectionFactory:
    def route(header: ConnectionHeader, slot: PeerSlot) -> Protocol:
        return EchoProtocol(worker, header)

    return ConnectionFactory(route, deadlines=Deadlines(reactor), header_timeout=60,
                             partial_header_timeout=30, metrics=worker.metrics,
                             connections=None)


class EchoWorker:
    """What a worker runs in these tests (the replay service's shape, echo behaviour)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.metrics = Metrics()
        self.factory = echo_factory(self)
        self.open: set[EchoProtocol] = set()
        self.registry = None

    def startService(self) -> None:
        pass

    def stopService(self) -> None:
        for protocol in list(self.open):
            protocol.transport.write(b"bye")
            protocol.transport.loseConnection()
        return task.deferLater(reactor, 0.1, lambda: None)


def build_echo(config, reactor_, index: int, count: int) -> EchoWorker:
    return EchoWorker(index)


def socket_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def holds_socket(pid: int | str, inode: int) -> bool:
    """Whether process ``pid`` has a descriptor of the socket with this inode."""
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        try:
            if os.readlink(os.path.join(directory, name)) == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def read_line(connection: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        data = connection.recv(1)
        if not data:
            raise AssertionError(f"EOF after {line!r}")
        line += data
    return line.decode()


def read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class HandoffTest(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dispatcher = Dispatcher(COUNT, reactor)
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.pool = WorkerPool(reactor, self.dispatcher, {}, build=f"{__name__}:build_echo",
                               environment=environment, first_delay=0.1)
        self.pool.start()
        self.addCleanup(self._stop_pool)
        factory = ConnectionFactory(self.dispatcher.route, deadlines=Deadlines(reactor),
                                    header_timeout=60, partial_header_timeout=30,
                                    metrics=Metrics(), connections=None)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.ws_port = reactor.listenTCP(0, RecordingWebSocketFactory(factory),
                                         interface="127.0.0.1")
        self.addCleanup(self.ws_port.stopListening)
        self.handed: list[tuple] = []  # (game id, server-side socket inode)
        hand_off = self.dispatcher.hand_off

        def recording(tcp, record):
            self.handed.append((record.header.game_id, socket_inode(tcp.fileno())))
            hand_off(tcp, record)

        self.dispatcher.hand_off = recording

    def _stop_pool(self) -> defer.Deferred:
        return self.pool.stop(timeout=10)  # SIGKILL after that: no worker outlives the test

    def connect(self, header: bytes) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                              timeout=10)
        connection.sendall(header)
        return connection

    @defer.inlineCallbacks
    def wait_until(self, condition, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("condition not met in time")
            yield sleep(0.02)

    @defer.inlineCallbacks
    def test_worker_gets_every_byte_in_order_and_main_keeps_no_descriptor(self):
        data = bytes(range(256)) * 64
        connection = self.connect(b"P/7/some/name\0" + data[:1000])
        self.addCleanup(connection.close)
        greeting = yield threads.deferToThread(read_line, connection)
        worker, pid = worker_for(7, COUNT), self.pool.pid(worker_for(7, COUNT))
        self.assertEqual(greeting, f"worker {worker} pid {pid} writer 7 some/name\n")
        echoed = yield threads.deferToThread(read_exactly, connection, 1000)
        self.assertEqual(echoed, data[:1000])
        ((game_id, inode),) = self.handed
        self.assertEqual(game_id, 7)
        yield self.wait_until(lambda: not holds_socket("self", inode))
        self.assertTrue(holds_socket(pid, inode))
        # No FIN reached the client: the connection goes on, served by the worker alone.
        connection.sendall(data[1000:])
        rest = yield threads.deferToThread(read_exactly, connection, len(data) - 1000)
        self.assertEqual(rest, data[1000:])
        connection.setblocking(False)
        with self.assertRaises(BlockingIOError):
            connection.recv(1)

    @defer.inlineCallbacks
    def test_games_are_pinned_by_id(self):
        connections = {}
        for game_id in (0, 1, 2, 3, 10, 2**64 - 1):
            for kind in ("P", "G"):
                connections[kind, game_id] = self.connect(f"{kind}/{game_id}/x\0".encode())
        self.addCleanup(lambda: [c.close() for c in connections.values()])
        for (kind, game_id), connection in connections.items():
            line = yield threads.deferToThread(read_line, connection)
            index = worker_for(game_id, COUNT)
            expected_kind = "writer" if kind == "P" else "reader"
            self.assertEqual(line, f"worker {index} pid {self.pool.pid(index)} "
                                   f"{expected_kind} {game_id} x\n")

    @defer.inlineCallbacks
    def test_websocket_connection_is_continued_by_the_worker(self):
        peer = yield websocket_connect(self.ws_port.getHost().port, "/any/path")
        peer.sendMessage(b"G/5/watcher\0hello", isBinary=True)
        yield self.wait_until(lambda: b"hello" in peer.body())
        peer.sendMessage(b" world", isBinary=True)
        yield self.wait_until(lambda: peer.body().endswith(b"hello world"))
        index = worker_for(5, COUNT)
        self.assertEqual(peer.body(), f"worker {index} pid {self.pool.pid(index)} reader 5 "
                                      f"watcher\nhello world".encode())
        self.assertTrue(all(binary for _, binary in peer.messages))
        peer.sendClose(1000)
        was_clean, code = yield peer.closed
        self.assertEqual((was_clean, code), (True, 1000))

    @defer.inlineCallbacks
    def test_killed_worker_is_restarted_and_the_other_is_unaffected(self):
        odd = self.connect(b"P/1/odd\0")
        even = self.connect(b"P/2/even\0")
        self.addCleanup(odd.close)
        self.addCleanup(even.close)
        yield threads.deferToThread(read_line, odd)
        yield threads.deferToThread(read_line, even)
        killed = self.pool.pid(0)
        os.kill(killed, signal.SIGKILL)
        # The killed worker's connection ends; the other worker's goes on.
        ended = yield threads.deferToThread(even.recv, 10)
        self.assertEqual(ended, b"")
        odd.sendall(b"still here")
        echoed = yield threads.deferToThread(read_exactly, odd, 10)
        self.assertEqual(echoed, b"still here")
        yield self.wait_until(lambda: self.pool.pid(0) not in (None, killed))
        self.assertEqual(self.pool.restarts, [1, 0])
        again = self.connect(b"G/4/again\0")
        self.addCleanup(again.close)
        line = yield threads.deferToThread(read_line, again)
        self.assertEqual(line, f"worker 0 pid {self.pool.pid(0)} reader 4 again\n")

    @defer.inlineCallbacks
    def test_connections_wait_while_their_worker_restarts(self):
        killed = self.pool.pid(1)
        os.kill(killed, signal.SIGKILL)
        yield self.wait_until(lambda: self.pool.processes[1] is None)
        waiting = self.connect(b"P/3/patient\0early")
        self.addCleanup(waiting.close)
        line = yield threads.deferToThread(read_line, waiting)
        self.assertEqual(line, f"worker 1 pid {self.pool.pid(1)} writer 3 patient\n")
        self.assertNotEqual(self.pool.pid(1), killed)
        echoed = yield threads.deferToThread(read_exactly, waiting, 5)
        self.assertEqual(echoed, b"early")

    @defer.inlineCallbacks
    def test_stop_lets_every_worker_finish_its_connections(self):
        connections = [self.connect(f"P/{game_id}/x\0".encode()) for game_id in range(4)]
        self.addCleanup(lambda: [c.close() for c in connections])
        for connection in connections:
            yield threads.deferToThread(read_line, connection)
        pids = [self.pool.pid(index) for index in range(COUNT)]
        yield self.pool.stop()
        for connection in connections:
            rest = yield threads.deferToThread(connection.recv, 10)
            self.assertEqual(rest, b"bye")
            self.assertEqual(connection.recv(10), b"")
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}/fd"))
        self.assertEqual(self.pool.processes, [None] * COUNT)

