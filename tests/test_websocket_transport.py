"""The WebSocket adapter (replayserver.accept.websocket) over real 127.0.0.1 connections.

The server side wraps a recording protocol instead of the real ConnectionProtocol, so each
test sees exactly which transport events the inner protocol gets.
"""
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from replayserver.accept.websocket import WebSocketFactory
from tests.support.httpsink import WebSocketPeer, websocket_connect


class Recorder(Protocol):
    """Inner protocol: records what the adapter delivers."""

    def __init__(self):
        self.received = bytearray()
        self.made = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(reason.value)  # the exception: a Failure would errback


class RecordingFactory(Factory):
    def __init__(self, refuse=False):
        self.refuse = refuse
        self.built = defer.DeferredQueue()
        self.started = self.stopped = 0

    def buildProtocol(self, addr):
        if self.refuse:
            return None
        inner = Recorder()
        inner.addr = addr
        self.built.put(inner)
        return inner

    def startFactory(self):
        self.started += 1

    def stopFactory(self):
        self.stopped += 1


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


class WebSocketTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.inner_factory = RecordingFactory()
        self.factory = WebSocketFactory(self.inner_factory)
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = yield endpoint.listen(self.factory)
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def connect(self, path="/any/path/is/fine?x=1"):
        client = yield websocket_connect(self.port.getHost().port, path)
        inner = yield self.inner_factory.built.get()
        yield inner.made
        return client, inner

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
        self.assertIsInstance((yield inner.lost), ConnectionLost)
        yield client.closed

    @defer.inlineCallbacks
    def test_other_close_code_is_an_error(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0", isBinary=True)
        client.sendClose(3001, "going")
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertIn("3001", str(reason))
        yield client.closed

    @defer.inlineCallbacks
    def test_dropped_tcp_connection_is_an_error(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0abc", isBinary=True)
        client.transport.loseConnection()  # TCP FIN (after the data), no WebSocket close
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertEqual(bytes(inner.received), b"P/1/x\0abc")
        yield client.closed

    @defer.inlineCallbacks
    def test_text_message_is_bad_data(self):
        client, inner = yield self.connect()
        client.sendMessage(b"P/1/x\0", isBinary=True)
        client.sendMessage("hello".encode(), isBinary=False)
        client.sendMessage(b"after", isBinary=True)
        reason = yield inner.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertIn("text message", str(reason))
        self.assertEqual(bytes(inner.received), b"P/1/x\0")
        was_clean, code = yield client.closed
        self.assertEqual(code, 1003)

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
        self.assertEqual(inner.addr, client.transport.getHost())
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
            yield task.deferLater(reactor, 0.01, lambda: None)
        inner.transport.unregisterProducer()
        inner.transport.loseConnection()
        yield client.closed
        self.assertGreaterEqual(producer.resumed_times, 1)
        self.assertEqual(len(client.body()), total)
        yield inner.lost

    @defer.inlineCallbacks
    def test_refused_by_the_wrapped_factory(self):
        self.inner_factory.refuse = True
        port = self.port.getHost().port
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
        factory.protocol = WebSocketPeer
        client = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        was_clean, code = yield client.closed
        self.assertEqual(code, 1013)

    def test_wrapped_factory_starts_and_stops_with_the_listener(self):
        self.assertEqual(self.inner_factory.started, 1)
        d = self.port.stopListening()
        return d.addCallback(lambda _: self.assertEqual(self.inner_factory.stopped, 1))
