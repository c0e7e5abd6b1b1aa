"""The WebSocket listener: the same `P/` / `G/` protocol inside binary WebSocket messages.

Each WebSocket connection is served by the very protocol the TCP listener uses (the wrapped
`ConnectionFactory` builds it) through `WebSocketTransport`, an `ITransport` over the WebSocket.
The rules (docs/protocol.md, "The WebSocket variant"):

* The connection takes its place in the server's connection count (`replayserver.limits`) at
  its TCP accept, before the upgrade; over a limit it is closed at once (`Refused`). Until the
  upgrade it counts as an ``initial`` connection.
* The upgrade request is bounded: at most `MAX_UPGRADE_REQUEST` bytes, complete within
  ``limits.partial_header_timeout`` seconds of the accept. A connection that breaks either
  bound, sends a bad upgrade request, or closes in the middle of one is closed, logged once
  and counted (`Bad data`, or `Timeout`), like a connection that ends before its ``P/`` /
  ``G/`` header; one that closes without sending anything is an empty connection (silent).
* The path of the upgrade request is ignored; binary payloads are one byte stream.
* A close with code 1000 is a clean end of stream (`ConnectionDone`); any other close or a
  dropped TCP connection is an error (`ConnectionLost`). A text message, or anything else that
  breaks the WebSocket protocol, is bad data: the connection is failed (close code 1003 for a
  text message) and its protocol gets `BadData`.
* Readers get binary messages. The TCP transport's buffer is where the WebSocket frames wait:
  the connection is the push producer of its TCP transport from the start, and passes its
  pauses and resumes on to the producer the inner protocol registers (`registerProducer`;
  push producers only). Pause/resume of the adapter itself pause and resume the TCP reading.
* Pings are answered while the TCP transport takes our writes. While it is paused (over its
  high-water mark: the peer does not read), pings are not answered; once it has flushed, the
  most recent of them gets its pong (RFC 6455, 5.5.3), so pongs never pile up in our buffer.
  A peer that sends more than `MAX_UNANSWERED_PINGS` pings during one pause is dropped as
  bad data.
* Closing never cuts what was written before: the close frame follows the data, and the wait
  for the peer's answering close (`CLOSE_TIMEOUT`) starts only once everything before the
  close frame has left this process's buffer. A peer that does not answer in time is closed
  in order (a FIN after what the kernel still holds for it), so a slow reader gets every byte;
  only a connection failed for bad data is reset. A reader that takes nothing at all is
  dropped by the reader's own stall timeout (``limits.reader_stall_timeout``).

Autobahn's own log lines are left out (errors excepted): each outcome is logged once, here or
by the protocol the connection runs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IPullProducer,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from txaio.tx import make_logger
from zope.interface import implementer

from replayserver.accept.protocol import ConnectionFactory
from replayserver.deadlines import Deadline
from replayserver.limits import PeerSlot, Slot, count_limited
from replayserver.outcomes import BadData, ConnectionCategory, ConnectionResult

CLOSE_NORMAL = WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL              # 1000
CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA  # 1003

#: Limits on what a peer may make us buffer: FA streams arrive in small messages.
MAX_MESSAGE_SIZE = 1 << 20
#: Longest upgrade request accepted (request line and headers, blank line included). The
#: requests of FAF's clients and of browsers are well under 2 KiB; 8 KiB leaves room for the
#: headers a proxy adds, and bounds what a client makes us buffer before it is a WebSocket
#: at all (autobahn itself buffers the request without any bound).
MAX_UPGRADE_REQUEST = 8 * 1024
#: Seconds the peer has to answer our close frame, counted from when everything written before
#: it has left our buffer. What the kernel still holds for a slow reader reaches it even when
#: this runs out (the connection is then closed in order, not reset).
CLOSE_TIMEOUT = 30.0
#: Pings a peer may send while we cannot write to it (it does not read) before it is dropped.
#: A client that pings now and then sends a few during the longest pause a reader is allowed
#: (``limits.reader_stall_timeout``); a flood sends this many in a few kilobytes.
MAX_UNANSWERED_PINGS = 100
#: Most characters of a client's text (a bad request, a close reason) quoted in a log line.
QUOTED_TEXT = 200

_INITIAL = ConnectionCategory.INITIAL.value
_UPGRADE_REQUEST_END = b"\r\n\r\n"
_PONG = 10  # the opcode


def quoted(text: str) -> str:
    """Text a client chose, fit for a log line: cut short, newlines and other control
    characters escaped (so it cannot forge lines or terminal codes)."""
    return repr(text[:QUOTED_TEXT])[1:-1]


@implementer(ITransport, IConsumer, IPushProducer, ISystemHandle)
class WebSocketTransport:
    """Presents one open WebSocket connection as a byte-stream transport."""

    def __init__(self, connection: WebSocketConnection) -> None:
        self.connection = connection

    @property
    def _tcp(self) -> Any:
        return self.connection.transport

    def getHandle(self) -> Any:
        """The TCP connection's socket (the read beat asks it whether more is waiting)."""
        return self._tcp.getHandle()

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary message; dropped once the WebSocket is closing (as TCP
        transports drop writes after loseConnection)."""
        websocket: WebSocketServerProtocol = self.connection
        if data and websocket.state == WebSocketProtocol.STATE_OPEN:
            websocket.sendMessage(data, isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close normally (1000) after everything written so far (see the module's docstring).
        What is written before the close is all there is: a producer still registered is let
        go."""
        self.unregisterProducer()
        self.connection.sendClose(CLOSE_NORMAL)

    def abortConnection(self) -> None:
        self._tcp.abortConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self._tcp.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self._tcp.getHost()
        return host

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Paused and resumed with the TCP transport's buffer (through the connection, the
        TCP transport's one producer). Only push producers (``streaming``) are taken."""
        if not streaming:
            raise ValueError("the WebSocket transport takes only push producers")
        self.connection.register_inner_producer(IPushProducer(producer))

    def unregisterProducer(self) -> None:
        self.connection.unregister_inner_producer()

    def pauseProducing(self) -> None:
        self._tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()

    def stopProducing(self) -> None:
        self._tcp.stopProducing()


@implementer(IPullProducer)
class _Flushed:
    """Calls ``then`` once a TCP transport has written out what it holds now.

    A pull producer is asked for data once as it registers, and after that each time the
    transport's buffer is empty. Registered right after a close frame was written (so the
    buffer is not empty), its second call means that the close frame and everything before it
    have left this process.
    """

    def __init__(self, tcp: IConsumer, then: Callable[[], None]) -> None:
        self._tcp = tcp
        self._then = then
        self._armed = False

    def start(self) -> None:
        self._tcp.registerProducer(self, False)  # calls resumeProducing at once: not yet
        self._armed = True

    def resumeProducing(self) -> None:
        if self._armed:
            self._armed = False
            self._tcp.unregisterProducer()
            self._then()

    def stopProducing(self) -> None:
        """The connection is gone (its close is handled by connectionLost)."""
        self._armed = False


@implementer(IPushProducer)
class WebSocketConnection(WebSocketServerProtocol):
    """One WebSocket connection; once open, it drives an inner protocol through the adapter.

    ``slot`` is the connection's place in the connection count when it is held already (a
    connection a worker process adopts); otherwise the connection takes one at its accept.
    It is the push producer of its TCP transport until it closes (see the module docstring).
    """

    log = make_logger(level="error")  # autobahn's lines: outcomes are logged once, here
    _log = Logger()

    def __init__(self, slot: Slot | None = None) -> None:
        super().__init__()
        self.slot = slot
        self._inner: Protocol | None = None
        self._refused = False  # over a connection limit at the accept (counted then)
        #: Why the upgrade did not happen: the result and the log line's reason.
        self._not_upgraded: tuple[ConnectionResult, str] | None = None
        self._bad_data: str | None = None
        self._upgrade_wait: Deadline | None = None
        self._close_wait: Deadline | None = None
        self._writes_paused = False  # the TCP transport's buffer is over its high-water mark
        self._inner_producer: IPushProducer | None = None
        self._unanswered_ping: bytes | None = None  # the payload of the latest one
        self._unanswered_pings = 0  # during this pause

    @property
    def listener(self) -> WebSocketFactory:
        """The factory that built this connection."""
        factory = self.factory
        assert isinstance(factory, WebSocketFactory)
        return factory

    # --- before the upgrade -----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        IConsumer(self.transport).registerProducer(self, True)  # dropConnection unregisters
        wrapped = self.listener.wrapped
        if self.slot is None:
            self.slot = PeerSlot(wrapped.connections)
        if not self.slot.held:
            limit = self.slot.take(self._peer())
            if limit is not None:
                self._refused = True
                count_limited(wrapped.metrics, "connection", limit)
                self._count_and_log(ConnectionResult.REFUSED, f"limit {limit} reached")
                self.dropConnection(abort=False)
                return
        wrapped.metrics.active_connections.labels(category=_INITIAL).inc()
        # (not autobahn's openHandshakeTimeout: its timer rounds down to whole seconds)
        self._upgrade_wait = wrapped.deadlines.add(wrapped.partial_header_timeout,
                                                   self._upgrade_timed_out)

    def processHandshake(self) -> None:
        """Autobahn buffers the request until its blank line, however long: bound it."""
        if (len(self.data) >= MAX_UPGRADE_REQUEST
                and self.data.find(_UPGRADE_REQUEST_END, 0, MAX_UPGRADE_REQUEST) < 0):
            reason = f"upgrade request longer than {MAX_UPGRADE_REQUEST} bytes"
            self._not_upgraded = (ConnectionResult.BAD_DATA, reason)
            self.failHandshake(reason, 431)  # Request Header Fields Too Large
            return
        super().processHandshake()

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        if self._not_upgraded is None:
            self._not_upgraded = (ConnectionResult.BAD_DATA,
                                  f"bad upgrade request: {quoted(reason)}")
        super().failHandshake(reason, code, responseHeaders)

    def _upgrade_timed_out(self) -> None:
        self._upgrade_wait = None
        if self.state == WebSocketProtocol.STATE_CONNECTING and self._not_upgraded is None:
            timeout = self.listener.wrapped.partial_header_timeout
            self._not_upgraded = (ConnectionResult.TIMEOUT,
                                  f"upgrade request not finished after {timeout:g} s")
            self.dropConnection(abort=True)

    def onConnect(self, request: ConnectionRequest) -> None:
        """Accept any path, no subprotocol."""
        return None

    # --- open -------------------------------------------------------------------------------

    def onOpen(self) -> None:
        assert self.slot is not None
        wrapped = self.listener.wrapped
        wrapped.deadlines.cancel(self._upgrade_wait)
        self._upgrade_wait = None
        wrapped.metrics.active_connections.labels(category=_INITIAL).dec()  # the inner counts it
        inner: Protocol = wrapped.connection(self.slot)  # it keeps the place from now
        self._inner = inner
        inner.makeConnection(WebSocketTransport(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._inner is None or self._bad_data is not None:
            return
        if not isBinary:
            self.fail_bad_data(CLOSE_UNSUPPORTED_DATA,
                               "text message (only binary messages carry the stream)")
            return
        self._inner.dataReceived(payload)

    def fail_bad_data(self, code: int, reason: str) -> None:
        """Close the connection for breaking the protocol: its inner protocol is told
        `BadData` with ``reason`` (and counts and logs it once)."""
        self._bad_data = reason
        # sendClose takes only 1000 and 3000-4999: autobahn's way to fail a connection
        self._fail_connection(code, reason)

    def onPing(self, payload: bytes) -> None:
        """Answered at once while the TCP transport takes writes; otherwise the latest is kept
        for when it has flushed, and a peer that pings too much meanwhile is dropped."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if not self._writes_paused:
            self._pong(payload)
            return
        self._unanswered_ping = payload
        self._unanswered_pings += 1
        if self._unanswered_pings > MAX_UNANSWERED_PINGS and self._bad_data is None:
            self._bad_data = (f"more than {MAX_UNANSWERED_PINGS} pings while it was not"
                              f" reading what it was sent")
            self.wasClean = False
            self.wasNotCleanReason = self._bad_data
            self.dropConnection(abort=True)  # a close frame would not be read either

    # --- flow control: the producer of the TCP transport -----------------------------------

    def register_inner_producer(self, producer: IPushProducer) -> None:
        """Pass this connection's pauses and resumes on to ``producer`` (for the adapter)."""
        if self._inner_producer is not None:
            raise RuntimeError(f"cannot register producer {producer}: producer"
                               f" {self._inner_producer} was never unregistered")
        if self.state == WebSocketProtocol.STATE_CLOSED:
            producer.stopProducing()
            return
        self._inner_producer = producer
        if self._writes_paused:
            producer.pauseProducing()

    def unregister_inner_producer(self) -> None:
        self._inner_producer = None

    def pauseProducing(self) -> None:
        """The TCP transport's buffer is full (called on each write while it is)."""
        if self._writes_paused:
            return
        self._writes_paused = True
        if self._inner_producer is not None:
            self._inner_producer.pauseProducing()

    def resumeProducing(self) -> None:
        """The TCP transport has written out everything it held."""
        self._writes_paused = False
        self._unanswered_pings = 0
        ping, self._unanswered_ping = self._unanswered_ping, None
        if getattr(self.transport, "disconnecting", False):
            # closed under us (a hand-off's end): the TCP transport waits for its producer
            IConsumer(self.transport).unregisterProducer()
            return
        if ping is not None and self.state == WebSocketProtocol.STATE_OPEN:
            self._pong(ping)
        if self._inner_producer is not None:
            self._inner_producer.resumeProducing()

    def stopProducing(self) -> None:
        """The TCP connection is gone (connectionLost follows)."""
        producer, self._inner_producer = self._inner_producer, None
        if producer is not None:
            producer.stopProducing()

    def _pong(self, payload: bytes) -> None:
        self.sendFrame(opcode=_PONG, payload=payload)  # (a ping's payload fits a pong's)

    # --- closing ----------------------------------------------------------------------------

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        """Autobahn's, with our wait for the answer (its own close timeout is off): for a
        connection failed for bad data at once, otherwise once the close frame is out."""
        opening = self.state == WebSocketProtocol.STATE_OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if not opening or isReply or self.state != WebSocketProtocol.STATE_CLOSING:
            return
        if self.failedByMe:
            self._await_close_answer()
        else:
            # nothing more is written: the TCP transport's producer is now the flush watch
            tcp = IConsumer(self.transport)
            tcp.unregisterProducer()
            _Flushed(tcp, self._await_close_answer).start()

    def _await_close_answer(self) -> None:
        if self.state == WebSocketProtocol.STATE_CLOSING:
            self._close_wait = self.listener.wrapped.deadlines.add(
                self.listener.close_timeout, self.onCloseHandshakeTimeout)

    def onCloseHandshakeTimeout(self) -> None:
        """The peer did not answer our close in time. Unlike autobahn (which resets), close
        the TCP connection in order: what the kernel still holds reaches the peer. Only a
        connection failed for bad data is reset."""
        self._close_wait = None
        if self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self.wasClean = False
        self.wasNotCleanReason = "the peer did not answer the close in time"
        self.wasCloseHandshakeTimeout = True
        self.dropConnection(abort=self.failedByMe)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        deadlines = self.listener.wrapped.deadlines
        deadlines.cancel(self._upgrade_wait)
        deadlines.cancel(self._close_wait)
        self._upgrade_wait = self._close_wait = None
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connectionLost(Failure(self._ending(code, reason)))
        elif not self._refused:
            self._closed_before_upgrade()

    def _ending(self, code: int | None, reason: str | None) -> ConnectionLost | ConnectionDone:
        """What the inner protocol is told of the end of the connection."""
        if self._bad_data is not None:
            return BadData(self._bad_data)
        if self.failedByMe:  # autobahn failed it: it broke the WebSocket protocol
            why = (self.localCloseReason or b"").decode("utf-8", "replace")
            return BadData(f"WebSocket protocol broken: {quoted(why)}")
        if code == CLOSE_NORMAL:
            return ConnectionDone()
        return ConnectionLost(f"WebSocket closed with code {code}: {quoted(reason or '')}")

    def _closed_before_upgrade(self) -> None:
        assert self.slot is not None
        self.slot.release()
        self.listener.wrapped.metrics.active_connections.labels(category=_INITIAL).dec()
        outcome = self._not_upgraded
        if outcome is None:
            if not self.data:
                return  # an empty connection: nothing to say
            outcome = (ConnectionResult.BAD_DATA,
                       "connection closed before the end of the upgrade request")
        self._count_and_log(*outcome)

    def _count_and_log(self, result: ConnectionResult, reason: str) -> None:
        self.listener.wrapped.metrics.served_connections.labels(result=result.value).inc()
        self._log.info("WebSocket connection from {peer} closed ({result}): {reason}",
                       peer=self._peer(), result=result.value, reason=reason)

    def _peer(self) -> IAddress:
        return ITCPTransport(self.transport).getPeer()


class WebSocketFactory(WebSocketServerFactory):
    """The factory for ``server.websocket_listen``; ``wrapped`` builds each inner protocol,
    counts the connections and gives the upgrade timeout (its ``partial_header_timeout``)."""

    protocol = WebSocketConnection

    def __init__(self, wrapped: ConnectionFactory, *,
                 close_timeout: float = CLOSE_TIMEOUT) -> None:
        # (the base classes are named: mypy lets calls into the untyped library through only so)
        WebSocketServerFactory.__init__(self, server=None)  # no Server header with a version
        self.wrapped = wrapped
        self.close_timeout = close_timeout
        self.noisy = False
        WebSocketServerFactory.setProtocolOptions(
            self,
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            openHandshakeTimeout=0,  # ours instead (partial_header_timeout), and:
            closeHandshakeTimeout=0,  # ours instead: it starts once the data before is out
            failByDrop=False,
            webStatus=False,  # a request without an upgrade is bad data, not a status page
        )

    def connection(self, slot: Slot) -> WebSocketConnection:
        """A connection whose place in the count is held already (one a worker adopts)."""
        connection = self.protocol(slot)
        connection.factory = self
        return connection
