"""The protocol every connection starts with: it reads the `P/` or `G/` header, then hands over.

`ConnectionProtocol` buffers only the header (at most 1026 bytes), enforces the header
timeouts (the long ``server.header_timeout`` while nothing has arrived, then the short
``limits.partial_header_timeout`` once the header has begun: a header that stalls half-way is
not a lobby waiting for its game) and the connection limits per peer and in total
(`replayserver.limits`), and then makes a `WriterProtocol` or `ReaderProtocol` on the same
transport and forwards every later event to it.  It uses only `ITransport` methods, so the
WebSocket listener can drive it through an adapter transport.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.accept.handshake import (
    ConnectionHeader,
    ConnectionKind,
    HandshakeError,
    HandshakeParser,
)
from replayserver.limits import ConnectionCounter, PeerSlot, count_limited, default_limits
from replayserver.receive.writer import WriterProtocol
from replayserver.save.admission import NoAdmission
from replayserver.send.reader import ReaderProtocol

if TYPE_CHECKING:
    from replayserver.config import Values
    from replayserver.game.registry import GameRegistry
    from replayserver.metrics import Metrics
    from replayserver.save.admission import Admission


class ConnectionProtocol(Protocol):
    """Reads the connection header, then delegates to the writer or reader protocol."""

    _log = Logger()

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self._parser: HandshakeParser | None = HandshakeParser()
        self._timeout: IDelayedCall | None = None
        self._handler: Protocol | None = None  # the writer or reader protocol, once known
        self._started = False  # the header has begun
        # Its place in the factory's connection counter (writers and readers count themselves
        # in a worker, where the connections arrive handed over).
        self._slot = PeerSlot(None if factory.handed_over else factory.connections)

    def connectionMade(self) -> None:
        factory = self.factory
        factory.metrics.active_connections.labels(category="initial").inc()
        self._timeout = factory.clock.callLater(
            factory.header_timeout, self._timed_out, "no connection header", factory.header_timeout)
        limit = self._slot.take(self.transport.getPeer())
        if limit is not None:
            count_limited(factory.metrics, "connection", limit)
            self._reject("Refused", f"limit {limit} reached")

    def dataReceived(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.dataReceived(data)
            return
        if self._parser is None:  # rejected; the connection is closing
            return
        if not self._started and data:
            self._started = True
            self._timeout.cancel()
            partial = self.factory.limits.partial_header_timeout
            self._timeout = self.factory.clock.callLater(
                partial, self._timed_out, "connection header not finished", partial)
        try:
            header = self._parser.feed(data)
        except HandshakeError as error:
            self._reject("Bad data", str(error))
            return
        if header is not None:
            self._hand_over(header, self._parser.leftover)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._slot.release()
        if self._handler is not None:
            self._handler.connectionLost(reason)
            return
        parser = self._end_initial()
        if parser is None:
            return  # already counted when rejected
        try:
            parser.end()
        except HandshakeError as error:
            self._count_and_log("Bad data", str(error))

    def _hand_over(self, header: ConnectionHeader, leftover: bytes) -> None:
        self._end_initial()
        handler = self.factory.handler_for(header)
        self._handler = handler
        self.dataReceived = handler.dataReceived  # later chunks skip this protocol
        handler.makeConnection(self.transport)
        if leftover:
            handler.dataReceived(leftover)

    def _timed_out(self, what: str, seconds: float) -> None:
        self._timeout = None
        self._reject("Timeout", f"{what} after {seconds} s")

    def _reject(self, result: str, reason: str) -> None:
        self._end_initial()
        self._count_and_log(result, reason)
        self.transport.loseConnection()

    def _end_initial(self) -> HandshakeParser | None:
        """Leave the initial phase (once); the parser if it had not been left yet."""
        parser, self._parser = self._parser, None
        if parser is not None:
            self.factory.metrics.active_connections.labels(category="initial").dec()
            if self._timeout is not None and self._timeout.active():
                self._timeout.cancel()
            self._timeout = None
        return parser

    def _count_and_log(self, result: str, reason: str) -> None:
        self.factory.metrics.served_connections.labels(result=result).inc()
        self._log.info(
            "Connection from {peer} closed ({result}): {reason}",
            peer=self.transport.getPeer(), result=result, reason=reason,
        )


class ConnectionFactory(Factory):
    """Builds a `ConnectionProtocol` per connection; all of them share one game registry.

    ``limits`` is the ``limits`` configuration section (defaults if None). ``handed_over``:
    connections arrive from the main process with their header read (a worker process), so
    the writers and readers count them against the connection limits, not this protocol.
    """

    def __init__(
        self,
        registry: GameRegistry,
        *,
        clock: IReactorTime,
        header_timeout: float,
        metrics: Metrics,
        admission: Admission | NoAdmission | None = None,
        limits: Values | None = None,
        handed_over: bool = False,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.header_timeout = header_timeout
        self.metrics = metrics
        self.admission = admission if admission is not None else NoAdmission()
        self.limits = limits if limits is not None else default_limits()
        self.connections = ConnectionCounter(self.limits.connections_per_peer,
                                             self.limits.connections)
        self.handed_over = handed_over

    def buildProtocol(self, addr: IAddress) -> ConnectionProtocol:
        return ConnectionProtocol(self)

    def handler_for(self, header: ConnectionHeader) -> Protocol:
        """The protocol that serves a connection with this header."""
        connections = self.connections if self.handed_over else None
        if header.kind is ConnectionKind.WRITER:
            return WriterProtocol(self.registry, header.game_id, header.name, self.metrics,
                                  self.admission, limits=self.limits, connections=connections)
        return ReaderProtocol(self.registry, header.game_id, header.name, self.metrics,
                              clock=self.clock, limits=self.limits, connections=connections)

