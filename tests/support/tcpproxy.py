"""A TCP proxy on 127.0.0.1 for outage tests: it relays to a target until stop() cuts every
relayed connection and refuses new ones; start() relays again; close() releases its port.

The port stays bound through an outage (new connections are accepted and cut at once, as a
database that is going away does), so no other process can take it meanwhile."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


class _Relay(Protocol):
    """One side of a relayed connection; writes what it receives to its peer."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.peer: _Relay | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.proxy._relays.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.proxy._relays.discard(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()
        self.closed.callback(None)


class _Inbound(_Relay):
    """The accepted side: reads nothing until the outbound connection is up."""

    connecting: Deferred[_Relay] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.proxy.relaying:
            self.transport.abortConnection()
            return
        self.transport.pauseProducing()
        outbound = _Relay(self.proxy)
        self.connecting = connectProtocol(self.proxy._target, outbound)
        self.connecting.addCallbacks(self._linked, lambda _: self.transport.abortConnection())

    def _linked(self, outbound: _Relay) -> None:
        self.peer, outbound.peer = outbound, self
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        super().connectionLost(reason)


class TcpProxy:
    """Relays 127.0.0.1:<port> to target_host:target_port."""

    def __init__(self, reactor, target_host: str, target_port: int) -> None:
        self._reactor = reactor
        self._target = TCP4ClientEndpoint(reactor, target_host, target_port)
        self._relays: set[_Relay] = set()
        self._listening: IListeningPort | None = None
        self.relaying = False
        self.port = 0

    def start(self) -> None:
        """Relay (again); the first start listens on a free port."""
        if self._listening is None:
            factory = Factory.forProtocol(lambda: _Inbound(self))
            self._listening = self._reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.port = self._listening.getHost().port
        self.relaying = True

    def stop(self) -> Deferred:
        """The outage: abort every relayed connection, cut new ones at once; fires once the
        relayed ones are gone."""
        self.relaying = False
        waits = [relay.closed for relay in self._relays]
        for relay in list(self._relays):
            relay.transport.abortConnection()
        return DeferredList(waits)

    def close(self) -> Deferred:
        """Stop, and release the port."""
        stopped = self.stop()
        if self._listening is None:
            return stopped
        listening, self._listening = self._listening, None
        return DeferredList([stopped, listening.stopListening()])
