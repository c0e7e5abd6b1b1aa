"""A writer and a slow reader over real loopback TCP: the reader gets every byte, then a close."""
from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.support import samples
from tests.support.harness import Server

BIG = "8604509.scfareplay"  # 2.9 MB: far more than the socket buffers


class Collector(Protocol):
    """Reads nothing for `stall` seconds (the server must hold back), then everything."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.received: list[bytes] = []
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"G/1/slow.SCFAreplay\0")
        self.transport.pauseProducing()
        self.resume = reactor.callLater(self.stall, self.transport.resumeProducing)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object) -> None:
        if self.resume.active():
            self.resume.cancel()
        self.closed.callback(b"".join(self.received))


@defer.inlineCallbacks
def until(condition):
    """Let the reactor run until ``condition()`` holds."""
    while not condition():
        yield task.deferLater(reactor, 0.01, lambda: None)


class TcpTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_slow_reader_gets_everything_then_close(self):
        data = samples.read(BIG)
        server = Server(self, clock=reactor, delay=0, sample_interval=0.05, grace_period=0.2)
        port = reactor.listenTCP(0, server.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        writer = yield connectProtocol(endpoint, Protocol())
        writer.transport.write(b"P/1/w.SCFAreplay\0" + data)
        yield until(lambda: server.registry.get(1) is not None)
        game = server.registry.get(1)
        yield until(lambda: game.live.streams[0].received == len(data))
        reader = Collector(stall=0.5)
        yield connectProtocol(endpoint, reader)
        yield until(lambda: game.readers == 1)
        writer.transport.loseConnection()

        received = yield reader.closed
        self.assertEqual(len(received), len(data))
        self.assertEqual(received, data)
        server.saver.finish(1)
        self.assertIsNone(server.registry.get(1))
        self.assertEqual(server.served("Success"), 2)
