"""Limits at the accepting side: connections per peer and in total, the partial header timeout.

`limited_server` (a `tests.support.harness.Server` with a ``limits`` section) and
`connect_from` are shared by the other tests/test_limits_*.py files.
"""
from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.handshake import ConnectionHeader, ConnectionKind
from replayserver.accept.protocol import ConnectionFactory, HeaderPhase
from replayserver.deadlines import Deadlines
from replayserver.limits import ConnectionCounter
from replayserver.metrics import RESULTS
from replayserver.workers.handoff import Dispatcher
from tests.support.harness import Server, limits


def limited_server(testcase: SynchronousTestCase, counted: bool = True,
                   **overrides) -> Server:
    """A test server (Clock, fake saver) whose registry and factory use these limits;
    ``counted=False``: connections arrive counted elsewhere (a worker process)."""
    return Server(testcase, limits=limits(**overrides), counted=counted)


def connect_from(server: Server, host: str, data: bytes = b"", port: int = 40000):
    """Like ``server.connect`` from the peer ``host``."""
    return server.connect(data, host=host, port=port)


def sample(server: Server, name: str, labels: dict) -> float:
    return server.sample(name, labels)


def limited(server: Server, limit: str) -> float:
    return sample(server, "replayserver_limited_connections_total", {"limit": limit})


def refused(server: Server, kind: str) -> float:
    return sample(server, "replayserver_refused_connections_total",
                  {"kind": kind, "reason": "limit"})


class ConnectionCounterTests(SynchronousTestCase):
    def test_counts_per_host_and_in_total(self) -> None:
        counter = ConnectionCounter(per_peer=2, total=3)
        a1, a2, a3 = (IPv4Address("TCP", "10.0.0.1", port) for port in (1, 2, 3))
        b = IPv4Address("TCP", "10.0.0.2", 1)
        c = IPv4Address("TCP", "10.0.0.3", 1)
        self.assertIsNone(counter.admit(a1))
        self.assertIsNone(counter.admit(a2))
        self.assertEqual(counter.admit(a3), "connections_per_peer")  # ports do not matter
        self.assertIsNone(counter.admit(b))
        self.assertEqual(counter.admit(c), "connections")
        self.assertEqual((counter.total, counter.from_peer(a3)), (3, 2))
        counter.release(a1)
        self.assertIsNone(counter.admit(c))
        for peer in (a2, b, c):
            counter.release(peer)
        self.assertEqual((counter.total, counter.from_peer(a1)), (0, 0))

    def test_none_is_no_limit(self) -> None:
        counter = ConnectionCounter(per_peer=None, total=None)
        peer = IPv4Address("TCP", "10.0.0.1", 1)
        self.assertEqual([counter.admit(peer) for _ in range(5000)], [None] * 5000)


class PeerAndTotalLimitTests(SynchronousTestCase):
    def served(self, server: Server) -> dict[str, float]:
        counts = {result: server.served(result) for result in RESULTS}
        return {result: count for result, count in counts.items() if count}

    def test_connections_per_peer(self) -> None:
        server = limited_server(self, connections_per_peer=3)
        held = [connect_from(server, "10.0.0.1", port=port)[1] for port in range(3)]
        with capturedLogs() as events:
            _, over = connect_from(server, "10.0.0.1", b"P/1/x\0")
        self.assertFalse(over.connected)
        self.assertEqual(over.value(), b"")
        self.assertIn("connections_per_peer", "".join(str(e.get("reason")) for e in events))
        self.assertTrue(all(t.connected for t in held))
        self.assertIsNone(server.registry.get(1))  # what it sent went nowhere
        self.assertTrue(connect_from(server, "10.0.0.2")[1].connected)  # another peer
        self.assertEqual(self.served(server), {"Refused": 1})
        self.assertEqual(refused(server, "connection"), 1)
        self.assertEqual(limited(server, "connections_per_peer"), 1)
        held[0].loseConnection()  # a slot is free again
        self.assertTrue(connect_from(server, "10.0.0.1")[1].connected)
        self.assertEqual(server.active("initial"), 4)

    def test_writers_and_readers_count_until_they_close(self) -> None:
        server = limited_server(self, connections_per_peer=2)
        _, writer = connect_from(server, "10.0.0.1", b"P/1/w\0")
        _, reader = connect_from(server, "10.0.0.1", b"G/1/r\0")
        self.assertTrue(reader.connected)
        self.assertFalse(connect_from(server, "10.0.0.1")[1].connected)
        reader.loseConnection()
        writer.loseConnection()
        self.assertEqual(server.factory.connections.total, 0)

    def test_total_connections(self) -> None:
        server = limited_server(self, connections=2)
        first = connect_from(server, "10.0.0.1")[1]
        connect_from(server, "10.0.0.2")
        _, over = connect_from(server, "10.0.0.3")
        self.assertFalse(over.connected)
        self.assertEqual(limited(server, "connections"), 1)
        first.loseConnection()
        self.assertTrue(connect_from(server, "10.0.0.3")[1].connected)
        self.assertEqual(self.served(server), {"Refused": 1})

    def test_refused_connection_leaves_no_timer_and_no_gauge(self) -> None:
        server = limited_server(self, connections=1)
        connect_from(server, "10.0.0.1")
        connect_from(server, "10.0.0.2")
        self.assertEqual(len(server.clock.getDelayedCalls()), 1)  # the first one's timeout
        self.assertEqual(server.active("initial"), 1)

    def test_a_worker_counts_nothing_the_listening_process_did(self) -> None:
        """A worker adopts connections that the listening process counted: it takes no place
        for them (a limit means the same with and without workers)."""
        server = limited_server(self, counted=False, connections_per_peer=1)
        _, first = connect_from(server, "10.0.0.1", b"P/1/w\0")
        _, second = connect_from(server, "10.0.0.1", b"P/1/w2\0")
        self.assertTrue(first.connected and second.connected)
        self.assertEqual(limited(server, "connections_per_peer"), 0)


class HandoffCountingTests(SynchronousTestCase):
    def test_listening_process_counts_the_connection_it_hands_over(self) -> None:
        """In workers mode the listening process counts a connection from its accept; the
        place goes with the connection to the hand-off."""
        server = Server(self)
        counter = ConnectionCounter(per_peer=1, total=None)
        factory = ConnectionFactory(
            Dispatcher(1, server.clock, metrics=server.metrics, limits=limits()).route,
            deadlines=Deadlines(server.clock),
            header_timeout=60, partial_header_timeout=30, metrics=server.metrics,
            connections=counter)
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "1.2.3.4", 1))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"P/7/w\0")
        self.assertEqual(counter.total, 1)
        transport.loseConnection()
        self.assertEqual(counter.total, 0)
        server.clock.advance(0)


class PartialHeaderTimeoutTests(SynchronousTestCase):
    def test_begun_header_must_finish_within_the_partial_timeout(self) -> None:
        server = limited_server(self, partial_header_timeout=30)
        _, transport = connect_from(server, "10.0.0.1", b"P/12")
        server.clock.advance(29)
        transport.protocol.dataReceived(b"3/na")  # more bytes do not restart the clock
        server.clock.advance(1)
        self.assertFalse(transport.connected)
        self.assertEqual(server.served("Timeout"), 1)
        self.assertEqual(server.clock.getDelayedCalls(), [])
        self.assertEqual(server.active("initial"), 0)

    def test_silent_connection_gets_the_long_timeout_then_the_short_one(self) -> None:
        server = limited_server(self, partial_header_timeout=30)
        _, transport = connect_from(server, "10.0.0.1")
        server.clock.advance(21000)  # a lobby waiting for its game
        self.assertTrue(transport.connected)
        transport.protocol.dataReceived(b"G")
        server.clock.advance(29)
        self.assertTrue(transport.connected)
        transport.protocol.dataReceived(b"/1/x\0")  # finished in time: no more timeout
        server.clock.advance(21600)
        self.assertEqual(server.served("Timeout"), 0)

    def test_slow_drip_of_a_header_is_cut(self) -> None:
        """One byte every 20 s would keep a per-byte idle timer alive forever."""
        server = limited_server(self, partial_header_timeout=30)
        _, transport = connect_from(server, "10.0.0.1", b"P")
        for byte in b"/1/abcdef":
            if not transport.connected:
                break
            transport.protocol.dataReceived(bytes([byte]))
            server.clock.advance(20)
        self.assertFalse(transport.connected)
        self.assertEqual(server.served("Timeout"), 1)

    def test_writer_protocol_unaffected(self) -> None:
        server = limited_server(self, partial_header_timeout=30)
        protocol, transport = connect_from(server, "10.0.0.1", b"P/1/w\0")
        self.assertIs(protocol.phase, HeaderPhase.HANDED_OVER)
        server.clock.advance(100)  # nothing sent since the header: fine (game not launched)
        self.assertTrue(transport.connected)
