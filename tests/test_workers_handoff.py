"""The hand-off mechanism with real worker processes and real sockets on 127.0.0.1.

The workers run `EchoWorker` (built by `build_echo` in the worker process): each handed-off
connection first gets one line naming the worker, the connection kind, game id and name,
then every byte it sends back, and ``bye`` when its worker stops; it gives its place in the
connection count back when it closes, as the writer and reader protocols do. The main side is
the real `ConnectionFactory` (counting connections) routed by the `Dispatcher`, and the
`WorkerPool`, on this test's reactor.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from replayserver.accept.handshake import ConnectionHeader
from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import LimitsSection
from replayserver.deadlines import Deadlines
from replayserver.limits import ConnectionCounter, Slot
from replayserver.metrics import Metrics
from replayserver.workers.handoff import Dispatcher, QueryFailed
from replayserver.accept.websocket import MAX_MESSAGE_SIZE
from replayserver.workers.recording import MAX_RECORDING, RecordingWebSocketFactory
from replayserver.workers.status import WorkerStatus
from replayserver.workers import supervisor
from replayserver.workers.supervisor import WorkerPool
from replayserver.workers.placement import worker_for
from replayserver.workers.wire import MAX_PAYLOAD
from tests.support.clients import UPGRADE, client_frame, closed_by_server
from tests.support.httpsink import websocket_connect

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNT = 2
#: A game whose snapshot is larger than a frame may carry.
HUGE_GAME = 41


class EchoProtocol(Protocol):
    _log = Logger()

    def __init__(self, worker: EchoWorker, header: ConnectionHeader, slot: Slot) -> None:
        self._worker = worker
        self._header = header
        self._slot = slot

    def connectionMade(self) -> None:
        self._worker.open.add(self)
        h = self._header
        self._log.info("Echo {name!r} of game {game_id} connected", name=h.name,
                       game_id=h.game_id)
        if h.name == "fail":
            try:
                raise ValueError("a failure in a worker")
            except ValueError:
                self._log.failure("Echo of game {game_id} failed", game_id=h.game_id)
        self.transport.write(
            f"worker {self._worker.index} pid {os.getpid()} {h.kind.value} {h.game_id} "
            f"{h.name}\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self._worker.open.discard(self)
        self._slot.release()


def echo_factory(worker: EchoWorker) -> ConnectionFactory:
    def route(header: ConnectionHeader, slot: Slot) -> Protocol:
        return EchoProtocol(worker, header, slot)

    return ConnectionFactory(route, deadlines=Deadlines(reactor), header_timeout=60,
                             partial_header_timeout=30, metrics=worker.metrics,
                             connections=None)


class HugeGame:
    def snapshot(self, detail: bool = False) -> dict[str, Any]:
        return {"id": HUGE_GAME, "blob": "x" * (MAX_PAYLOAD + 1)}


class EchoRegistry:
    def games(self) -> list[Any]:
        return []

    def get(self, game_id: int) -> HugeGame | None:
        return HugeGame() if game_id == HUGE_GAME else None


class EchoWorker:
    """What a worker runs in these tests (the replay service's shape, echo behaviour)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.metrics = Metrics()
        self.factory = echo_factory(self)
        self.open: set[EchoProtocol] = set()
        self.registry = EchoRegistry()

    def health_checks(self) -> dict[str, Any]:
        def database() -> None:
            if self.index == 1:
                raise ConnectionRefusedError("no database here")

        return {"vault": lambda: None, "database": database}

    def startService(self) -> None:
        pass

    def stopService(self) -> defer.Deferred[None]:
        for protocol in list(self.open):
            protocol.transport.write(b"bye")
            protocol.transport.loseConnection()
        return task.deferLater(reactor, 0.1, lambda: None)


def build_echo(config: Any, reactor_: Any, index: int, count: int) -> EchoWorker:
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


def process_state(pid: int) -> str:
    """The state letter of a process (R running, S sleeping, T stopped...)."""
    with open(f"/proc/{pid}/status") as status:
        return next(line.split()[1] for line in status if line.startswith("State:"))


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


def pong_flood(port: int, pongs: int) -> bytes:
    """Upgrade, then send unsolicited pongs (control frames that need no answer) and never a
    header: the upgrade's answer, once the server has closed the connection."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connection:
        connection.sendall(UPGRADE)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(4096)
        pong = client_frame(0xA, b"p" * 125)
        try:
            for _ in range(pongs // 100):
                connection.sendall(pong * 100)
        except (BrokenPipeError, ConnectionResetError):
            return answer  # closed by the server meanwhile
        if closed_by_server(connection, 10) is None:
            raise AssertionError("the server left the flooding connection open")
        return answer


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class HandoffHarness(unittest.TestCase):
    """The pool, the dispatcher and the listeners of these tests (no tests here)."""

    timeout = 60

    def start(self, *, first_delay: float = 0.1, **limits: Any) -> None:
        """The pool, the dispatcher and the listeners (TCP and WebSocket), with ``limits``."""
        self.metrics = Metrics()
        settings = LimitsSection(**limits)
        self.dispatcher = Dispatcher(COUNT, reactor, metrics=self.metrics, limits=settings)
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.pool = WorkerPool(reactor, self.dispatcher, {}, build=f"{__name__}:build_echo",
                               environment=environment, first_delay=first_delay)
        self.pool.start()
        self.addCleanup(self.pool.stop, 10)  # SIGKILL after that: no worker outlives the test
        self.counter = ConnectionCounter(settings.connections_per_peer, settings.connections)
        factory = ConnectionFactory(self.dispatcher.route, deadlines=Deadlines(reactor),
                                    header_timeout=60, partial_header_timeout=30,
                                    metrics=self.metrics, connections=self.counter)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.ws_port = reactor.listenTCP(0, RecordingWebSocketFactory(factory),
                                         interface="127.0.0.1")
        self.addCleanup(self.ws_port.stopListening)
        self.handed: list[tuple[int, int]] = []  # (game id, server-side socket inode)
        hand_off = self.dispatcher.hand_off

        def recording(connection: Any) -> None:
            tcp, record = connection.outgoing(-1)
            self.handed.append((record.header.game_id, socket_inode(tcp.fileno())))
            hand_off(connection)

        self.dispatcher.hand_off = recording  # type: ignore[method-assign]

    def connect(self, header: bytes) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                              timeout=10)
        connection.sendall(header)
        self.addCleanup(connection.close)
        return connection

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0

    @defer.inlineCallbacks
    def wait_until(self, condition, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("condition not met in time")
            yield sleep(0.02)


class HandoffTest(HandoffHarness):
    @defer.inlineCallbacks
    def test_worker_gets_every_byte_in_order_and_main_keeps_no_descriptor(self):
        self.start()
        data = bytes(range(256)) * 64
        connection = self.connect(b"P/7/some/name\0" + data[:1000])
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
    def test_a_connection_counts_until_its_worker_says_it_closed(self):
        self.start(connections_per_peer=3)
        held = [self.connect(f"P/{game_id}/x\0".encode()) for game_id in (1, 2, 3)]
        for connection in held:
            yield threads.deferToThread(read_line, connection)
        inodes = [inode for _, inode in self.handed]
        yield self.wait_until(lambda: not any(holds_socket("self", i) for i in inodes))
        # The main process holds none of the sockets, and still counts all three.
        self.assertEqual(self.counter.total, 3)
        refused = self.connect(b"")
        self.assertEqual((yield threads.deferToThread(closed_by_server, refused, 10)), b"")
        self.assertEqual(self.sample("replayserver_limited_connections_total",
                                     limit="connections_per_peer"), 1)
        held[0].close()
        yield self.wait_until(lambda: self.counter.total == 2)
        again = self.connect(b"G/4/x\0")
        line = yield threads.deferToThread(read_line, again)
        self.assertTrue(line.startswith("worker 0 "))
        self.assertEqual(self.counter.total, 3)

    @defer.inlineCallbacks
    def test_games_are_pinned_by_id(self):
        self.start()
        connections = {}
        for game_id in (0, 1, 2, 3, 10, 2**64 - 1):
            for kind in ("P", "G"):
                connections[kind, game_id] = self.connect(f"{kind}/{game_id}/x\0".encode())
        for (kind, game_id), connection in connections.items():
            line = yield threads.deferToThread(read_line, connection)
            index = worker_for(game_id, COUNT)
            expected_kind = "writer" if kind == "P" else "reader"
            self.assertEqual(line, f"worker {index} pid {self.pool.pid(index)} "
                                   f"{expected_kind} {game_id} x\n")

    @defer.inlineCallbacks
    def test_websocket_connection_is_continued_by_the_worker(self):
        self.start()
        peer = yield websocket_connect(self.ws_port.getHost().port, "/any/path")
        peer.sendMessage(b"G/5/watcher\0hello", isBinary=True)
        yield self.wait_until(lambda: b"hello" in peer.body())
        self.assertEqual(self.counter.total, 1)
        peer.sendMessage(b" world", isBinary=True)
        yield self.wait_until(lambda: peer.body().endswith(b"hello world"))
        index = worker_for(5, COUNT)
        self.assertEqual(peer.body(), f"worker {index} pid {self.pool.pid(index)} reader 5 "
                                      f"watcher\nhello world".encode())
        self.assertTrue(all(binary for _, binary in peer.messages))
        self.assertEqual(self.counter.total, 1)
        peer.sendClose(1000)
        was_clean, code = yield peer.closed
        self.assertEqual((was_clean, code), (True, 1000))
        yield self.wait_until(lambda: self.counter.total == 0)

    @defer.inlineCallbacks
    def test_control_frames_before_the_header_are_bounded_and_never_reach_a_worker(self):
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.start()
        port = self.ws_port.getHost().port
        pongs = 2 * MAX_RECORDING // 131  # twice the bound in pongs of 125 bytes
        answer = yield threads.deferToThread(pong_flood, port, pongs)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer[:100])
        self.assertEqual(self.handed, [])
        self.assertEqual(self.sample("replayserver_served_connections_total",
                                     result="Bad data"), 1)
        (closed,) = [formatEvent(e) for e in events if "(Bad data)" in formatEvent(e)]
        self.assertIn(f"more than {MAX_RECORDING} bytes before the end of the connection"
                      f" header", closed)
        yield self.wait_until(lambda: self.counter.total == 0)
        # The channels are intact: both workers take connections.
        for game_id in (1, 2):
            connection = self.connect(f"P/{game_id}/after\0".encode())
            line = yield threads.deferToThread(read_line, connection)
            self.assertIn(f"writer {game_id} after", line)
        self.assertEqual(self.pool.restarts, [0, 0])

    @defer.inlineCallbacks
    def test_a_header_in_a_full_size_message_after_pings_is_handed_over(self):
        self.start()
        peer = yield websocket_connect(self.ws_port.getHost().port)
        for _ in range(300):
            peer.sendPing(b"p" * 125)
        header = b"G/6/big\0"
        data = bytes(range(256)) * (MAX_MESSAGE_SIZE // 256)
        peer.sendMessage(header + data[len(header):], isBinary=True)
        yield self.wait_until(lambda: len(peer.body()) >= MAX_MESSAGE_SIZE - len(header),
                              timeout=20)
        self.assertEqual(peer.body().partition(b"\n")[2], data[len(header):])
        self.assertEqual([game_id for game_id, _ in self.handed], [6])
        peer.sendClose(1000)
        yield peer.closed

    @defer.inlineCallbacks
    def test_killed_worker_is_restarted_and_the_other_is_unaffected(self):
        self.start()
        odd = self.connect(b"P/1/odd\0")
        even = self.connect(b"P/2/even\0")
        yield threads.deferToThread(read_line, odd)
        yield threads.deferToThread(read_line, even)
        self.assertEqual(self.counter.total, 2)
        killed = self.pool.pid(0)
        os.kill(killed, signal.SIGKILL)
        # The killed worker's connection ends; the other worker's goes on.
        ended = yield threads.deferToThread(even.recv, 10)
        self.assertEqual(ended, b"")
        odd.sendall(b"still here")
        echoed = yield threads.deferToThread(read_exactly, odd, 10)
        self.assertEqual(echoed, b"still here")
        # The dead worker's connection no longer counts; the other one does.
        yield self.wait_until(lambda: self.counter.total == 1)
        yield self.wait_until(lambda: self.pool.pid(0) not in (None, killed))
        self.assertEqual(self.pool.restarts, [1, 0])
        again = self.connect(b"G/4/again\0")
        line = yield threads.deferToThread(read_line, again)
        self.assertEqual(line, f"worker 0 pid {self.pool.pid(0)} reader 4 again\n")

    @defer.inlineCallbacks
    def test_connections_wait_while_their_worker_restarts(self):
        self.start()
        killed = self.pool.pid(1)
        os.kill(killed, signal.SIGKILL)
        yield self.wait_until(lambda: self.pool.processes[1] is None)
        waiting = self.connect(b"P/3/patient\0early")
        line = yield threads.deferToThread(read_line, waiting)
        self.assertEqual(line, f"worker 1 pid {self.pool.pid(1)} writer 3 patient\n")
        self.assertNotEqual(self.pool.pid(1), killed)
        echoed = yield threads.deferToThread(read_exactly, waiting, 5)
        self.assertEqual(echoed, b"early")

    @defer.inlineCallbacks
    def test_the_queue_for_a_restarting_worker_is_bounded_in_count_and_time(self):
        self.start(first_delay=30, worker_queue=2, worker_queue_timeout=1)
        os.kill(self.pool.pid(1), signal.SIGKILL)
        yield self.wait_until(lambda: self.pool.processes[1] is None)
        waiting = [self.connect(f"P/{game_id}/w\0".encode()) for game_id in (1, 3)]
        yield self.wait_until(lambda: self.dispatcher.waiting() == 2)
        over = self.connect(b"G/5/over\0")
        self.assertEqual((yield threads.deferToThread(closed_by_server, over, 10)), b"")
        self.assertEqual(self.sample("replayserver_limited_connections_total",
                                     limit="worker_queue"), 1)
        self.assertEqual(self.dispatcher.waiting(), 2)
        # The other worker is not held up meanwhile.
        served = self.connect(b"P/2/served\0")
        self.assertIn("writer 2 served", (yield threads.deferToThread(read_line, served)))
        for connection in waiting:
            self.assertEqual((yield threads.deferToThread(closed_by_server, connection, 10)),
                             b"")
        self.assertEqual(self.sample("replayserver_limited_connections_total",
                                     limit="worker_queue_timeout"), 2)
        self.assertEqual(self.sample("replayserver_served_connections_total",
                                     result="Refused"), 3)
        self.assertEqual(self.sample("replayserver_refused_connections_total",
                                     kind="connection", reason="limit"), 3)
        self.assertEqual(self.counter.total, 1)  # the one served by worker 0

    @defer.inlineCallbacks
    def test_a_failed_or_oversized_answer_fails_that_query_alone(self):
        self.start()
        yield self.wait_until(lambda: len(self.dispatcher.channels()) == COUNT)
        status = WorkerStatus(self.dispatcher, self.metrics.registry)
        with self.assertRaises(QueryFailed) as raised:
            yield status.snapshot(HUGE_GAME)
        self.assertIn("does not fit the channel", str(raised.exception))
        with self.assertRaises(QueryFailed):
            yield self.dispatcher.channel(0).query({"what": "nonsense"})
        # the worker logged that failure: it is relayed here (and expected)
        yield self.wait_until(lambda: self.flushLoggedErrors(ValueError))
        # The channels go on: queries and connections.
        self.assertIsNone((yield status.snapshot(HUGE_GAME + 2)))
        self.assertEqual((yield status.snapshots()), [])
        connection = self.connect(f"P/{HUGE_GAME}/after\0".encode())
        self.assertIn("after", (yield threads.deferToThread(read_line, connection)))
        self.assertEqual(self.pool.restarts, [0, 0])

    @defer.inlineCallbacks
    def test_worker_health_checks(self):
        self.start()
        yield self.wait_until(lambda: len(self.dispatcher.channels()) == COUNT)
        status = WorkerStatus(self.dispatcher, self.metrics.registry)
        self.assertIsNone((yield status.health("vault")))
        with self.assertRaises(RuntimeError) as raised:
            yield status.health("database")
        self.assertEqual(str(raised.exception),
                         "worker 1: ConnectionRefusedError: no database here")

    @defer.inlineCallbacks
    def test_worker_log_events_are_relayed_as_events(self):
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.start()
        name = "evil\nname\x1b[31m"
        connection = self.connect(f"P/3/{name}\0".encode())
        yield threads.deferToThread(read_line, connection)
        failing = self.connect(b"P/4/fail\0")
        yield threads.deferToThread(read_line, failing)
        yield self.wait_until(lambda: any(e.get("worker") == 0 and "log_failure" in e
                                          for e in events))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        from twisted.logger import formatEventAsClassicLogText

        connected = next(e for e in events if e.get("worker") == 1
                         and "connected" in e.get("log_format", ""))
        self.assertEqual(connected["log_system"], "worker-1")
        self.assertEqual(connected["game_id"], 3)
        text = formatEventAsClassicLogText(connected)
        self.assertIn("[worker-1] Echo 'evil\\nname\\x1b[31m' of game 3 connected", text)
        self.assertEqual(text.count("\n"), 1)  # the name cannot forge a line
        failed = next(e for e in events if e.get("worker") == 0 and "log_failure" in e)
        text = formatEventAsClassicLogText(failed)
        self.assertIn("[worker-0] Echo of game 4 failed", text)
        self.assertIn("Traceback", text)
        self.assertIn("ValueError: a failure in a worker", text)
        self.assertIn("raise ValueError", text)

    @defer.inlineCallbacks
    def test_stop_kills_a_worker_that_does_not_stop_in_time(self):
        self.start()
        stuck = self.pool.pid(0)
        os.kill(stuck, signal.SIGSTOP)
        yield self.wait_until(lambda: process_state(stuck) == "T")
        started = time.monotonic()
        yield self.pool.stop(1)
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertFalse(os.path.exists(f"/proc/{stuck}/fd"))
        self.assertEqual(self.pool.processes, [None] * COUNT)

    @defer.inlineCallbacks
    def test_stop_lets_every_worker_finish_its_connections(self):
        self.start()
        connections = [self.connect(f"P/{game_id}/x\0".encode()) for game_id in range(4)]
        for connection in connections:
            yield threads.deferToThread(read_line, connection)
        pids = [self.pool.pid(index) for index in range(COUNT)]
        yield self.pool.stop(10)
        for connection in connections:
            rest = yield threads.deferToThread(connection.recv, 10)
            self.assertEqual(rest, b"bye")
            self.assertEqual(connection.recv(10), b"")
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}/fd"))
        self.assertEqual(self.pool.processes, [None] * COUNT)
        self.assertEqual(self.counter.total, 0)


class HungWorkerTest(HandoffHarness):
    @defer.inlineCallbacks
    def test_a_worker_that_takes_nothing_is_killed_and_restarted(self):
        """A stopped (or deadlocked) worker never acknowledges what it is sent: it is killed,
        the connections sent to it are closed and give their places back, and it restarts."""
        self.patch(supervisor, "HUNG_WORKER", 1.0)
        self.patch(supervisor, "HUNG_CHECK_INTERVAL", 0.2)
        self.start(first_delay=0.1)
        index = worker_for(8, COUNT)
        stopped = self.pool.pid(index)
        os.kill(stopped, signal.SIGSTOP)
        connection = self.connect(b"P/8/x\0")
        yield self.wait_until(lambda: self.counter.total == 1)
        yield self.wait_until(lambda: self.pool.pid(index) not in (None, stopped))
        yield self.wait_until(lambda: self.counter.total == 0)
        closed = yield threads.deferToThread(connection.recv, 100)
        self.assertEqual(closed, b"")
        greeting = yield threads.deferToThread(read_line, self.connect(b"P/8/y\0"))
        self.assertIn(f"worker {index} pid {self.pool.pid(index)}", greeting)
