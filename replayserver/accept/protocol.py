"""The protocol every connection starts with: it reads the `P/` or `G/` header, then hands over.

`ConnectionProtocol` buffers only the header (at most 1026 bytes), enforces the header timeouts
(the long ``server.header_timeout`` while nothing has arrived, then the short
``limits.partial_header_timeout`` once the header has begun: a header that stalls half-way is
not a lobby waiting for its game) and takes the connection's place in the server's connection
count (`replayserver.limits`). Once the header is complete it asks its factory's ``route`` for
the protocol that serves the connection (a writer, a reader, or in the listening process of
worker mode the hand-off to a worker), gives it the transport and the connection's place, and
forwards every later event to it. It uses only `ITransport` methods, so the WebSocket listener
drives it through an adapter transport. See docs/protocol.md.
"""
from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.accept.handshake import ConnectionHeader, HandshakeError, HandshakeParser
from replayserver.deadlines import Deadline, Deadlines
from replayserver.limits import ConnectionCounter, PeerSlot, Slot, count_limited
from replayserver.metrics import Metrics
from replayserver.outcomes import BadData, ConnectionCategory, ConnectionResult
from replayserver.transport import transport_of

#: Builds the protocol that serves a connection once its header is known; it takes over the
#: connection's place in the count (and releases it when the connection closes).
Route = Callable[[ConnectionHeader, Slot], Protocol]

_INITIAL = ConnectionCategory.INITIAL.value


class HeaderPhase(enum.Enum):
    SILENT = "silent"  # nothing received yet: a lobby waiting for its game
    PARTIAL = "partial"  # part of the header received
    HANDED_OVER = "handed over"  # a writer or reader protocol serves the connection
    CLOSED = "closed"  # refused, timed out or gone before the header was complete


class ConnectionProtocol(Protocol):
    """Reads the connection header, then delegates to the protocol its route gives."""

    __slots__ = ("transport", "connected", "factory", "phase", "_parser", "_timeout",
                 "_handler", "_slot")

    _log = Logger()

    def __init__(self, factory: ConnectionFactory, slot: Slot) -> None:
        self.factory = factory
        self.phase = HeaderPhase.SILENT
        self._parser: HandshakeParser | None = HandshakeParser()
        self._timeout: Deadline | None = None
        self._handler: Protocol | None = None  # the writer or reader protocol, once known
        self._slot = slot

    def connectionMade(self) -> None:
        factory = self.factory
        factory.metrics.active_connections.labels(category=_INITIAL).inc()
        self._timeout = factory.deadlines.add(
            factory.header_timeout,
            lambda: self._timed_out("no connection header", factory.header_timeout))
        if not self._slot.held:
            limit = self._slot.take(transport_of(self).getPeer())
            if limit is not None:
                count_limited(factory.metrics, "connection", limit)
                self._reject(ConnectionResult.REFUSED, f"limit {limit} reached")

    def dataReceived(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.dataReceived(data)
            return
        parser = self._parser
        if parser is None:  # rejected; the connection is closing
            return
        if self.phase is HeaderPhase.SILENT and data:
            self.phase = HeaderPhase.PARTIAL
            factory = self.factory
            factory.deadlines.cancel(self._timeout)
            partial = factory.partial_header_timeout
            self._timeout = factory.deadlines.add(
                partial, lambda: self._timed_out("connection header not finished", partial))
        try:
            header = parser.feed(data)
        except HandshakeError as error:
            self._reject(ConnectionResult.BAD_DATA, str(error))
            return
        if header is not None:
            self._hand_over(header, parser.leftover)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._handler is not None:
            self._handler.connectionLost(reason)
            return
        self._slot.release()
        parser = self._end_initial(HeaderPhase.CLOSED)
        if parser is None:
            return  # already counted when rejected
        if reason.check(BadData):  # the transport found the protocol broken
            self._count_and_log(ConnectionResult.BAD_DATA, reason.getErrorMessage())
            return
        try:
            parser.end()
        except HandshakeError as error:
            self._count_and_log(ConnectionResult.BAD_DATA, str(error))

    def _hand_over(self, header: ConnectionHeader, leftover: bytes) -> None:
        self._end_initial(HeaderPhase.HANDED_OVER)
        handler = self.factory.route(header, self._slot)
        self._handler = handler
        handler.makeConnection(self.transport)
        if leftover:
            handler.dataReceived(leftover)

    def _timed_out(self, what: str, seconds: float) -> None:
        self._timeout = None
        self._reject(ConnectionResult.TIMEOUT, f"{what} after {seconds} s")

    def _reject(self, result: ConnectionResult, reason: str) -> None:
        self._end_initial(HeaderPhase.CLOSED)
        self._count_and_log(result, reason)
        transport_of(self).loseConnection()

    def _end_initial(self, phase: HeaderPhase) -> HandshakeParser | None:
        """Leave the initial phase (once); the parser if it had not been left yet."""
        parser, self._parser = self._parser, None
        if parser is not None:
            self.phase = phase
            self.factory.metrics.active_connections.labels(category=_INITIAL).dec()
            timeout, self._timeout = self._timeout, None
            self.factory.deadlines.cancel(timeout)
        return parser

    def _count_and_log(self, result: ConnectionResult, reason: str) -> None:
        self.factory.metrics.served_connections.labels(result=result.value).inc()
        self._log.info(
            "Connection from {peer} closed ({result}): {reason}",
            peer=transport_of(self).getPeer(), result=result.value, reason=reason,
        )


class ConnectionFactory(Factory):
    """Builds a `ConnectionProtocol` per connection.

    ``connections`` counts them against the connection limits (None: they are counted
    elsewhere, as for the connections a worker process adopts). ``route`` builds the protocol
    of a connection whose header is known.
    """

    def __init__(
        self,
        route: Route,
        *,
        deadlines: Deadlines,
        header_timeout: float,
        partial_header_timeout: float,
        metrics: Metrics,
        connections: ConnectionCounter | None,
    ) -> None:
        self.route = route
        self.deadlines = deadlines
        self.header_timeout = header_timeout
        self.partial_header_timeout = partial_header_timeout
        self.metrics = metrics
        self.connections = connections

    def buildProtocol(self, addr: IAddress | None) -> ConnectionProtocol:
        return ConnectionProtocol(self, PeerSlot(self.connections))

    def connection(self, slot: Slot) -> ConnectionProtocol:
        """A protocol for a connection whose place is already held (a WebSocket connection
        counted from its TCP accept)."""
        return ConnectionProtocol(self, slot)
