"""The WebSocket listener: the same `P/` / `G/` protocol inside binary WebSocket messages.

Each WebSocket connection is served by the very protocol the TCP listener uses (whatever the
wrapped factory builds, the header-sniffing `ConnectionProtocol` in production), through
`WebSocketTransport`, an `ITransport` over the WebSocket. The rules (docs/protocol.md): the
upgrade request's path is ignored; binary payloads are one byte stream; a close with code 1000
is a clean end of stream (`ConnectionDone`), any other close or a dropped TCP connection is
an error (`ConnectionLost`), so such a writer's stream is not complete; text messages are bad
data and close the connection. Readers get binary messages. Flow control (`registerProducer`,
pause/resume) goes to the underlying TCP transport, whose buffer is where the WebSocket frames
wait.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

CLOSE_NORMAL = WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL              # 1000
CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA  # 1003
CLOSE_TRY_AGAIN_LATER = WebSocketProtocol.CLOSE_STATUS_CODE_TRY_AGAIN_LATER  # 1013

#: Limits on what a peer may make us buffer: FA streams arrive in small messages.
MAX_MESSAGE_SIZE = 1 << 20
#: Seconds a client has to complete the upgrade request.
OPEN_HANDSHAKE_TIMEOUT = 30.0


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketTransport:
    """Presents one open WebSocket connection as a byte-stream transport."""

    def __init__(self, connection: WebSocketConnection) -> None:
        self.connection = connection

    @property
    def _tcp(self) -> Any:
        return self.connection.transport

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary message; dropped once the WebSocket is closing (as TCP
        transports drop writes after loseConnection)."""
        if data and self.connection.state == WebSocketProtocol.STATE_OPEN:
            self.connection.sendMessage(data, isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close normally (1000): already written data goes out first."""
        self.connection.sendClose(CLOSE_NORMAL)

    def abortConnection(self) -> None:
        self._tcp.abortConnection()

    def getPeer(self) -> IAddress:
        return self._tcp.getPeer()

    def getHost(self) -> IAddress:
        return self._tcp.getHost()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self._tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()

    def stopProducing(self) -> None:
        self._tcp.stopProducing()


class WebSocketConnection(WebSocketServerProtocol):
    """One WebSocket connection; once open, it drives an inner protocol through the adapter."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: Protocol | None = None
        self._bad_data: str | None = None

    def onConnect(self, request) -> None:
        """Accept any path, no subprotocol (``sendClose`` only takes 1000 and 3000-4999, hence
        ``_fail_connection`` for the other codes below)."""
        return None

    def onOpen(self) -> None:
        inner = self.factory.wrapped.buildProtocol(self.transport.getPeer())
        if inner is None:  # the wrapped factory refused the connection
            self._fail_connection(CLOSE_TRY_AGAIN_LATER, "connection refused")
            return
        self._inner = inner
        inner.makeConnection(WebSocketTransport(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._inner is None or self._bad_data is not None:
            return
        if not isBinary:
            self._bad_data = "text message (only binary messages carry the stream)"
            self._fail_connection(CLOSE_UNSUPPORTED_DATA, self._bad_data)  # logs it
            return
        self._inner.dataReceived(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        if code == CLOSE_NORMAL and self._bad_data is None:
            inner.connectionLost(Failure(ConnectionDone()))
        else:
            why = self._bad_data or f"WebSocket closed with code {code}: {reason}"
            inner.connectionLost(Failure(ConnectionLost(why)))


class WebSocketFactory(WebSocketServerFactory):
    """The factory for ``server.websocket_listen``; ``wrapped`` builds each inner protocol."""

    protocol = WebSocketConnection

    def __init__(self, wrapped: Factory) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.noisy = False
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            failByDrop=False,
        )

    def startFactory(self) -> None:
        self.wrapped.doStart()
        super().startFactory()

    def stopFactory(self) -> None:
        self.wrapped.doStop()
        super().stopFactory()
