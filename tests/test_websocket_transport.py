"""The WebSocket adapter (replayserver.accept.websocket) over real 127.0.0.1 connections.

The server side wraps a `ConnectionFactory` whose connections are recording protocols instead
of the real ConnectionProtocol (except where a test says otherwise), so each test sees exactly
which transport events the inner protocol gets. Raw-socket clients (for what a WebSocket client
library will not send) run in threads.
"""
import socket
import struct
import time

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from replayserver.accept.protocol import ConnectionFactory
from replayserver.accept.websocket import (
    MAX_UNANSWERED_PINGS,
    MAX_UPGRADE_REQUEST,
    WebSocketFactory,
)
from replayserver.deadlines import Deadlines
from replayserver.limits import ConnectionCounter
from replayserver.metrics import Metrics
from replayserver.outcomes import BadData
from tests.support.httpsink import WebSocketPeer, websocket_connect

UPGRADE = (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


class Recorder(Protocol):
    """Inner protocol: records what the adapter delivers."""

    def __init__(self, slot):
        self.slot = slot
        self.received = bytearray()
        self.made = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(reason.value)  # the exception: a Failure would errback


class RecordingFactory(ConnectionFactory):
    """The listener's factory, building a `Recorder` for each upgraded connection."""

    def __init__(self, connections=None, partial_header_timeout=30.0, clock=reactor):
        super().__init__(self._no_route, deadlines=Deadlines(clock, resolution=0.1),
                         header_timeout=60.0, partial_header_timeout=partial_header_timeout,
                         metrics=Metrics(), connections=connections)
        self.built = defer.DeferredQueue()

    def _no_route(self, header, slot):
        raise AssertionError("the recorder has no header to route")

    def connection(self, slot):
        inner = Recorder(slot)
        self.built.put(inner)
        return inner

    def served(self, result):
        return self.metrics.registry.get_sample_value(
            "replayserver_served_connections_total", {"result": result}) or 0

    def initial(self):
        return self.metrics.registry.get_sample_value(
            "replayserver_active_connections_count", {"category": "initial"}) or 0


@implementer(IPushProducer)
class Producer:
    """Writes 64 KiB chunks to a transport while it is not paused."""

    def __init__(self, transport, total):
        self.transport = transport
        self.left = total
        self.paused_times = self.resumed_times = 0
        self.paused = False

    def pauseProducing(self):
        self.paused = True
        self.paused_times += 1

    def resumeProducing(self):
        self.paused = False
        self.resumed_times += 1
        self.run()

    def stopProducing(self):
        self.paused = True

    def run(self):
        while not self.paused and self.left > 0:
            chunk = min(self.left, 1 << 16)
            self.left -= chunk
            self.transport.write(b"x" * chunk)


def client_frame(opcode, payload=b""):
    """One masked client frame (a zero mask key: the payload goes as it is)."""
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + bytes(4) + payload


def ping(payload):
    return client_frame(9, payload)


def pong(payload):
    """The server's (unmasked) answer to ``ping(payload)``."""
    return struct.pack("!BB", 0x80 | 10, len(payload)) + payload


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class LogLines:
    """The text of every log event while the test runs."""

    def __init__(self, test):
        self.lines = []
        globalLogPublisher.addObserver(self._observe)
        test.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        self.lines.append(formatEvent(event))

    def matching(self, text):
        return [line for line in self.lines if text in line]


def raw_exchange(port, data, *, close=False, wait_for_close=True, timeout=10.0):
    """Send ``data`` from a plain socket; the server's answer until it closes (or the socket
    is closed by us first when ``close``)."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with connection:
        if data:
            connection.sendall(data)
        if close:
            return b""
        answer = b""
        if wait_for_close:
            while True:
                try:
                    chunk = connection.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
        return answer


class ListenerCase(unittest.TestCase):
    """A WebSocket listener on 127.0.0.1 around a `RecordingFactory` (or a given factory)."""

    timeout = 60

    @defer.inlineCallbacks
    def listen(self, wrapped=None, **options):
        self.wrapped = wrapped or RecordingFactory()
        self.factory = WebSocketFactory(self.wrapped, **options)
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = yield endpoint.listen(self.factory)
        self.addCleanup(self.port.stopListening)
        self.log = LogLines(self)

    @property
    def port_number(self):
        return self.port.getHost().port

    @defer.inlineCallbacks
    def connect(self, path="/any/path/is/fine?x=1"):
        client = yield websocket_connect(self.port_number, path)
        inner = yield self.wrapped.built.get()
        yield inner.made
        return client, inner


class WebSocketTests(ListenerCase):
    def setUp(self):
        return self.listen()

    @defer.inlineCallbacks
    def test_binary_messages_form_one_stream_and_close_1000_is_clean(self):
        client, inner = yield self.connect()
        for part in (b"P/12", b"/x\0", b"", b"\x01\x02" * 1000):
            client.sendMessage(part, isBinary=True)
        client.sendClose(1000)
        reason = yield inner.lost
        self.assertEqual(bytes(inner.received), b"P/12/x\0" + b"\x01\x02" * 1000)
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual((yield client.closed), (True, 1000))

    @defer.inlineCallbacks
    def test_reset_tcp_connection_is_an_error(self):
        client, inner = yield self.connect()
        client.transport.abortConnection()
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertNotIsInstance(reason, BadData)
        yield client.closed

    @defer.inlineCallbacks
    def test_other_close_code_is_an_error_and_its_reason_is_escaped(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0", isBinary=True)
        client.sendClose(3001, "going\nForged line \x1b[31m")
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertNotIsInstance(reason, BadData)
        self.assertIn("3001", str(reason))
        self.assertNotIn("\n", str(reason))
        self.assertNotIn("\x1b", str(reason))
        self.assertIn("Forged line", str(reason))
        yield client.closed

    @defer.inlineCallbacks
    def test_dropped_tcp_connection_is_an_error(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0abc", isBinary=True)
        client.transport.loseConnection()  # TCP FIN (after the data), no WebSocket close
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertNotIsInstance(reason, BadData)
        self.assertEqual(bytes(inner.received), b"P/1/x\0abc")
        yield client.closed

    @defer.inlineCallbacks
    def test_text_message_is_bad_data(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0", isBinary=True)
        client.sendMessage("hello".encode(), isBinary=False)
        client.sendMessage(b"after", isBinary=True)
        reason = yield inner.lost
        self.assertIsInstance(reason, BadData)
        self.assertIn("text message", str(reason))
        self.assertEqual(bytes(inner.received), b"P/1/x\0")
        was_clean, code = yield client.closed
        self.assertEqual(code, 1003)
        self.assertEqual(self.log.matching("failing WebSocket"), [])  # autobahn's line

    @defer.inlineCallbacks
    def test_message_over_the_size_limit_is_bad_data(self):
        client, inner = yield self.connect()
        client.sendMessage(b"x" * ((1 << 20) + 1), isBinary=True)
        reason = yield inner.lost
        self.assertIsInstance(reason, BadData)
        was_clean, code = yield client.closed
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_writes_are_binary_messages_and_lose_connection_closes_1000(self):
        client, inner = yield self.connect()
        inner.transport.write(b"header")
        inner.transport.writeSequence([b"bo", b"dy"])
        inner.transport.loseConnection()
        inner.transport.write(b"too late")
        self.assertEqual((yield client.closed), (True, 1000))
        self.assertEqual(client.messages, [(b"header", True), (b"body", True)])
        self.assertIsInstance((yield inner.lost), ConnectionDone)

    @defer.inlineCallbacks
    def test_abort_connection_drops(self):
        client, inner = yield self.connect()
        inner.transport.abortConnection()
        was_clean, code = yield client.closed
        self.assertFalse(was_clean)
        self.assertIsInstance((yield inner.lost), ConnectionLost)

    @defer.inlineCallbacks
    def test_peer_and_host_are_the_tcp_addresses(self):
        client, inner = yield self.connect()
        self.assertEqual(inner.transport.getPeer(), client.transport.getHost())
        self.assertEqual(inner.transport.getHost(), client.transport.getPeer())
        client.sendClose(1000)
        yield inner.lost
        yield client.closed

    @defer.inlineCallbacks
    def test_producer_is_paused_while_the_peer_does_not_read(self):
        client, inner = yield self.connect()
        client.transport.pauseProducing()  # the client stops reading
        total = 64 << 20
        producer = Producer(inner.transport, total)
        inner.transport.registerProducer(producer, True)
        producer.run()
        self.assertEqual(producer.paused_times, 1)
        self.assertGreater(producer.left, 0)  # it stopped writing instead of buffering it all
        client.transport.resumeProducing()
        while producer.left:
            yield sleep(0.01)
        inner.transport.unregisterProducer()
        inner.transport.loseConnection()
        yield client.closed
        self.assertGreaterEqual(producer.resumed_times, 1)
        self.assertEqual(len(client.body()), total)
        yield inner.lost


class ClosingTests(ListenerCase):
    """A close waits for what was written before it, however slowly the peer reads."""

    def setUp(self):
        return self.listen(close_timeout=0.5)  # short, to see that it does not cut

    @defer.inlineCallbacks
    def check_everything_arrives(self, total, pause, answered):
        client, inner = yield self.connect()
        client.transport.pauseProducing()  # the client reads nothing for a while
        data = bytes(range(256)) * (total // 256)
        for start in range(0, len(data), 1 << 16):
            inner.transport.write(data[start:start + (1 << 16)])
        inner.transport.loseConnection()
        yield sleep(pause)  # the close timeout is long gone
        client.transport.resumeProducing()
        closed = yield client.closed
        self.assertEqual(len(client.body()), len(data))
        self.assertEqual(client.body(), data)
        self.assertEqual(closed, (True, 1000))
        reason = yield inner.lost
        # answered: the wait for the close's answer began once our buffer was out
        self.assertIsInstance(reason, ConnectionDone if answered else ConnectionLost)

    def test_close_waits_for_the_buffered_data(self):
        """Megabytes still in this process's buffer: the wait for the answer to the close
        starts after them, and the peer answers in time."""
        return self.check_everything_arrives(16 << 20, 2.0, answered=True)

    def test_unanswered_close_lets_the_kernel_deliver(self):
        """Less than the kernel's buffers hold: our buffer is empty at once and the wait for
        the answer runs out while the peer has not read; what the kernel holds still arrives."""
        return self.check_everything_arrives(1 << 20, 2.0, answered=False)

    @defer.inlineCallbacks
    def test_unanswered_close_ends_the_connection(self):
        client, inner = yield self.connect()
        client.transport.pauseProducing()  # never answers
        inner.transport.loseConnection()
        started = time.monotonic()
        reason = yield inner.lost
        self.assertLess(time.monotonic() - started, 10)
        self.assertIsInstance(reason, ConnectionLost)
        client.transport.resumeProducing()
        yield client.closed


class UpgradeTests(ListenerCase):
    """Limits and bounds before the upgrade."""

    @defer.inlineCallbacks
    def test_connection_counts_from_the_tcp_accept(self):
        counter = ConnectionCounter(per_peer=2, total=None)
        yield self.listen(RecordingFactory(counter))
        first = socket.create_connection(("127.0.0.1", self.port_number))
        second = socket.create_connection(("127.0.0.1", self.port_number))
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        while counter.total < 2:
            yield sleep(0.01)
        self.assertEqual(self.wrapped.initial(), 2)
        # a third one, before any upgrade, is over the limit: closed at once
        answer = yield threads.deferToThread(raw_exchange, self.port_number, b"")
        self.assertEqual(answer, b"")
        self.assertEqual(self.wrapped.served("Refused"), 1)
        self.assertEqual(self.wrapped.metrics.registry.get_sample_value(
            "replayserver_limited_connections_total", {"limit": "connections_per_peer"}), 1)
        [line] = self.log.matching("WebSocket connection from")
        self.assertIn("Refused", line)
        self.assertIn("limit connections_per_peer reached", line)
        # one that leaves without a byte is an empty connection: silent, and its place is free
        first.close()
        while counter.total > 1:
            yield sleep(0.01)
        self.assertEqual(self.wrapped.served("Bad data"), 0)
        self.assertEqual(len(self.log.matching("WebSocket connection from")), 1)
        # the place taken at the accept is the one the inner protocol gets
        client = yield websocket_connect(self.port_number)
        inner = yield self.wrapped.built.get()
        self.assertTrue(inner.slot.held)
        self.assertEqual(counter.total, 2)
        self.assertEqual(self.wrapped.initial(), 1)  # the raw one; the inner counts its own
        client.sendClose(1000)
        yield inner.lost
        yield client.closed

    @defer.inlineCallbacks
    def test_place_is_released_by_the_connection_protocol(self):
        """With the real ConnectionProtocol inside: held from the accept to the close."""
        counter = ConnectionCounter(per_peer=1, total=None)
        factory = ConnectionFactory(
            lambda header, slot: None, deadlines=Deadlines(reactor, resolution=0.1),
            header_timeout=60.0, partial_header_timeout=30.0, metrics=Metrics(),
            connections=counter)
        yield self.listen(factory)
        client = yield websocket_connect(self.port_number)
        self.assertEqual(counter.total, 1)
        client.sendMessage(b"X/", isBinary=True)  # bad data for the connection protocol
        yield client.closed
        while counter.total:
            yield sleep(0.01)
        self.assertEqual(factory.metrics.registry.get_sample_value(
            "replayserver_served_connections_total", {"result": "Bad data"}), 1)

    @defer.inlineCallbacks
    def test_upgrade_request_is_bounded_in_size(self):
        yield self.listen()
        padding = b"X-Padding: " + b"a" * (MAX_UPGRADE_REQUEST) + b"\r\n"
        for data in (UPGRADE + padding,  # no end yet
                     UPGRADE + padding + b"\r\n"):  # complete, but too long
            with self.subTest(complete=data.endswith(b"\r\n\r\n")):
                answer = yield threads.deferToThread(raw_exchange, self.port_number, data)
                self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        self.assertEqual(self.wrapped.served("Bad data"), 2)
        lines = self.log.matching("WebSocket connection from")
        self.assertEqual(len(lines), 2)
        self.assertIn(f"longer than {MAX_UPGRADE_REQUEST} bytes", lines[0])
        self.assertEqual(self.wrapped.initial(), 0)
        # a request just under the bound is served
        fits = UPGRADE + b"X-Padding: " + b"a" * (MAX_UPGRADE_REQUEST - len(UPGRADE) - 20)
        fits += b"\r\n\r\n"
        self.assertLessEqual(len(fits), MAX_UPGRADE_REQUEST)
        answer = yield threads.deferToThread(raw_exchange, self.port_number, fits,
                                              wait_for_close=False)
        inner = yield self.wrapped.built.get()
        yield inner.lost

    @defer.inlineCallbacks
    def test_upgrade_request_is_bounded_in_time(self):
        yield self.listen(RecordingFactory(partial_header_timeout=0.5))
        for data in (UPGRADE[:20], b""):  # begun, or not even begun
            started = time.monotonic()
            answer = yield threads.deferToThread(raw_exchange, self.port_number, data)
            self.assertEqual(answer, b"")
            self.assertGreaterEqual(time.monotonic() - started, 0.5)  # never early
            self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(self.wrapped.served("Timeout"), 2)
        lines = self.log.matching("WebSocket connection from")
        self.assertEqual(len(lines), 2)
        self.assertIn("upgrade request not finished after 0.5 s", lines[0])
        self.assertEqual(self.log.matching("dropping connection"), [])  # autobahn's line
        self.assertEqual(self.wrapped.initial(), 0)

    @defer.inlineCallbacks
    def test_bad_or_unfinished_upgrade_requests_are_bad_data(self):
        yield self.listen()
        cases = [
            (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 426"),  # no upgrade
            (b"POST / HTTP/1.1\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET /\x1b[31m\nforged HTTP/1.1\r\n\r\n", b"HTTP/1.1 400"),
        ]
        for data, status in cases:
            answer = yield threads.deferToThread(raw_exchange, self.port_number, data)
            self.assertTrue(answer.startswith(status), answer)
            self.assertNotIn(b"Autobahn", answer)
        yield threads.deferToThread(raw_exchange, self.port_number, UPGRADE[:30], close=True)
        yield threads.deferToThread(raw_exchange, self.port_number, b"", close=True)  # empty
        while self.wrapped.served("Bad data") < 4:
            yield sleep(0.01)
        yield sleep(0.2)
        self.assertEqual(self.wrapped.served("Bad data"), 4)
        lines = self.log.matching("WebSocket connection from")
        self.assertEqual(len(lines), 4)
        self.assertIn("closed before the end of the upgrade request", lines[3])
        for line in lines:
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\n", line)
        self.assertEqual(self.log.matching("failing WebSocket opening handshake"), [])
        self.assertEqual(self.wrapped.initial(), 0)

    @defer.inlineCallbacks
    def test_refused_connection_never_upgrades(self):
        yield self.listen(RecordingFactory(ConnectionCounter(per_peer=0, total=None)))
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port_number}/")
        factory.protocol = WebSocketPeer
        client = yield endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port_number).connect(factory)
        was_clean, code = yield client.closed
        self.assertFalse(was_clean)
        self.assertFalse(client.opened.called)
        self.assertEqual(self.wrapped.served("Refused"), 1)


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A `StringTransport` standing for a TCP one (the connection asks for its peer as such)."""


class PingTests(unittest.TestCase):
    """Pongs and flow control, on a connection over a `StringTransport` standing for TCP: its
    producer (the connection) is paused and resumed by hand, as a TCP transport does when its
    buffer goes over its high-water mark and when it has written everything out."""

    def setUp(self):
        self.wrapped = RecordingFactory(clock=task.Clock())
        self.connection = WebSocketFactory(self.wrapped).buildProtocol(None)
        self.tcp = TCPStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.connection.makeConnection(self.tcp)
        self.connection.dataReceived(UPGRADE + b"\r\n")
        self.assertTrue(self.tcp.value().startswith(b"HTTP/1.1 101 "))
        self.tcp.clear()
        self.inner = self.successResultOf(self.wrapped.built.get())
        self.log = LogLines(self)

    def test_the_connection_is_the_tcp_transports_push_producer(self):
        self.assertIs(self.tcp.producer, self.connection)
        self.assertTrue(self.tcp.streaming)

    def test_pings_are_answered_while_the_tcp_transport_takes_writes(self):
        self.connection.dataReceived(ping(b"one") + ping(b"two"))
        self.assertEqual(self.tcp.value(), pong(b"one") + pong(b"two"))

    def test_while_paused_pings_wait_and_the_latest_is_answered_after(self):
        self.tcp.producer.pauseProducing()
        for _ in range(3):  # the TCP transport pauses its producer on each write while full
            self.tcp.producer.pauseProducing()
        self.connection.dataReceived(ping(b"a") + ping(b"b"))
        self.connection.dataReceived(client_frame(2, b"data") + ping(b"c"))
        self.assertEqual(self.tcp.value(), b"")
        self.assertEqual(bytes(self.inner.received), b"data")  # the stream goes on
        self.tcp.producer.resumeProducing()
        self.assertEqual(self.tcp.value(), pong(b"c"))
        self.connection.dataReceived(ping(b"d"))
        self.assertEqual(self.tcp.value(), pong(b"c") + pong(b"d"))

    def test_a_peer_that_keeps_pinging_while_paused_is_dropped_as_bad_data(self):
        self.tcp.producer.pauseProducing()
        self.connection.dataReceived(ping(b"p") * MAX_UNANSWERED_PINGS)
        self.assertFalse(self.tcp.disconnecting)
        # the count starts again with each pause
        self.tcp.producer.resumeProducing()
        self.tcp.producer.pauseProducing()
        self.connection.dataReceived(ping(b"p") * MAX_UNANSWERED_PINGS)
        self.assertFalse(self.tcp.disconnecting)
        self.connection.dataReceived(ping(b"p") * 10 + client_frame(2, b"late"))
        self.assertTrue(self.tcp.disconnected)  # aborted: a close would not be read either
        self.assertIsNone(self.tcp.producer)
        self.assertEqual(self.tcp.value(), pong(b"p"))  # the one for the first pause
        self.connection.connectionLost(Failure(ConnectionLost()))
        reason = self.successResultOf(self.inner.lost)
        self.assertIsInstance(reason, BadData)
        self.assertIn(f"more than {MAX_UNANSWERED_PINGS} pings", str(reason))
        self.assertEqual(bytes(self.inner.received), b"")
        self.assertEqual(self.log.lines, [])  # the inner protocol logs the outcome, once

    def test_inner_push_producer_follows_the_tcp_transport(self):
        producer = Producer(self.inner.transport, 0)
        self.inner.transport.registerProducer(producer, True)
        self.assertIs(self.tcp.producer, self.connection)
        self.tcp.producer.pauseProducing()
        self.tcp.producer.pauseProducing()
        self.assertEqual((producer.paused, producer.paused_times), (True, 1))
        self.tcp.producer.resumeProducing()
        self.assertEqual((producer.paused, producer.resumed_times), (False, 1))
        self.assertRaises(RuntimeError, self.inner.transport.registerProducer, producer, True)
        self.inner.transport.unregisterProducer()
        self.tcp.producer.pauseProducing()
        self.assertEqual(producer.paused_times, 1)
        # registered while the buffer is full: paused at once
        self.inner.transport.registerProducer(producer, True)
        self.assertEqual(producer.paused_times, 2)
        # the TCP connection goes away: the producer is stopped
        self.tcp.producer.stopProducing()
        self.assertTrue(producer.paused)

    def test_pull_producers_are_not_taken(self):
        self.assertRaises(ValueError, self.inner.transport.registerProducer, object(), False)

    def test_a_tcp_transport_closed_under_the_connection_is_let_go(self):
        """A hand-off closes the TCP transport itself: at its flush the connection stops
        being its producer (a TCP transport waits for its producer before it closes)."""
        self.tcp.producer.pauseProducing()
        self.tcp.loseConnection()
        self.connection.resumeProducing()
        self.assertIsNone(self.tcp.producer)

    def test_close_hands_the_tcp_transport_to_the_flush_watch(self):
        self.inner.transport.write(b"last")
        self.inner.transport.loseConnection()
        self.assertIsNotNone(self.tcp.producer)
        self.assertIsNot(self.tcp.producer, self.connection)
        self.assertFalse(self.tcp.streaming)
