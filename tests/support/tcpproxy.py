"""A TCP proxy on 127.0.0.1 for outage tests: it relays to a target until stop() closes its port
and cuts every relayed connection; start() opens the same port again."""

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

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()
        outbound = _Relay(self.proxy)
        self.connecting = connectProtocol(self.proxy._target, outbound)
        self.connecting.addCallbacks(self._linked, lambda _: self.transport.abortConnection())

    def _linked(self, outbound: _Relay) -> None:
        self.peer, outbound.peer = outbound, self
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.connecting.cancel()
        super().connectionLost(reason)


class TcpProxy:
    """Relays 127.0.0.1:<port> to target_host:target_port."""

    def __init__(self, reactor, target_host: str, target_port: int) -> None:
        self._reactor = reactor
        self._target = TCP4ClientEndpoint(reactor, target_host, target_port)
        self._relays: set[_Relay] = set()
        self._listening: IListeningPort | None = None
        self.port = 0

    def start(self) -> None:
        """Listen (again) on the proxy's port; the first start picks a free one."""
        factory = Factory.forProtocol(lambda: _Inbound(self))
        self._listening = self._reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port

    def stop(self) -> Deferred:
        """Close the port and abort every relayed connection; fires once all are gone."""
        waits = [relay.closed for relay in self._relays]
        for relay in list(self._relays):
            relay.transport.abortConnection()
        if self._listening is not None:
            waits.append(self._listening.stopListening())
            self._listening = None
        return DeferredList(waits)
