"""The worker's side of the hand-off: adopt each socket the main process sends and run it.

`HandoffReceiver` reads the worker's UNIX socket: received file descriptors queue up until
their `HandedOff` record is complete. A TCP connection is adopted with
``adoptStreamConnection`` straight into the writer or reader protocol its header asks for
(``factory.route``), and the bytes the main process had read after the header are fed to it
first. A WebSocket connection is adopted into a replayed WebSocket connection
(`replayserver.workers.recording`), which is fed every byte the main process had read. Each
record is acknowledged once adopted; queries from the main process are answered by the
`WorkerHost`, and an answer that cannot be sent (not JSON, or too large for a frame) is an
error reply for that query alone.

The listening process counts every connection against the connection limits until the worker
says it closed: each adopted connection's place is a `RemoteSlot`, whose release sends
``CLOSED`` with the connection's id (docs/operations.md, "Limits").
"""
from __future__ import annotations

import collections
import os
import socket
from typing import TYPE_CHECKING, Any, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IFileDescriptorReceiver,
    IReactorSocket,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.accept.protocol import ConnectionFactory
from replayserver.workers.wire import (
    ACK,
    CONFIG,
    CONNECTION,
    QUERY,
    REPLY,
    TCP,
    FrameReader,
    HandedOff,
    WireError,
    closed_frame,
    frame,
    json_frame,
    json_payload,
)

if TYPE_CHECKING:
    from replayserver.workers.recording import ReplayedWebSocketFactory


class WorkerHost(TypingProtocol):
    """What the receiver drives (`replayserver.workers.worker.Worker`)."""

    def configure(self, config: dict[str, Any]) -> None: ...

    def connection_factory(self) -> ConnectionFactory: ...

    def answer(self, query: dict[str, Any]) -> Any: ...

    def main_lost(self) -> None: ...


class RemoteSlot:
    """The place the listening process holds for a connection handed to this worker.

    It is already held (the worker counts nothing itself); releasing it tells the listening
    process, once, that the connection closed.
    """

    __slots__ = ("connection_id", "_channel", "_held")

    def __init__(self, connection_id: int, channel: ITransport) -> None:
        self.connection_id = connection_id
        self._channel = channel
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def take(self, peer: IAddress) -> str | None:
        return None  # held since the listening process accepted the connection

    def release(self) -> None:
        if self._held:
            self._held = False
            self._channel.write(closed_frame(self.connection_id))


class Adopting(ServerFactory):
    """Gives ``adoptStreamConnection`` the protocol already chosen for the socket."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


@implementer(IFileDescriptorReceiver)
class HandoffReceiver(Protocol):
    """The worker's end of its UNIX socket to the main process."""

    _log = Logger()

    def __init__(self, host: WorkerHost, reactor: IReactorSocket) -> None:
        self._host = host
        self._reactor = reactor
        self._frames = FrameReader()
        self._descriptors: collections.deque[int] = collections.deque()
        self._websockets: ReplayedWebSocketFactory | None = None

    def _channel(self) -> ITCPTransport:
        return ITCPTransport(self.transport)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._descriptors.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        try:
            for kind, payload in self._frames.feed(data):
                self._frame(kind, payload)
        except WireError as error:
            self._log.error("Bad data from the main process ({error})", error=error)
            self._channel().abortConnection()

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind == CONNECTION:
            record = HandedOff.decode(payload)
            if not self._descriptors:
                raise WireError("connection record without a descriptor")
            protocol = self._adopt(record, self._descriptors.popleft())
            self._channel().write(frame(ACK))
            if protocol is not None and record.data:
                protocol.dataReceived(record.data)
        elif kind == QUERY:
            self._answer(json_payload(payload))
        elif kind == CONFIG:
            self._host.configure(json_payload(payload))
        else:
            raise WireError(f"unknown frame type {kind!r}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for descriptor in self._descriptors:
            os.close(descriptor)
        self._descriptors.clear()
        self._host.main_lost()

    def _adopt(self, record: HandedOff, descriptor: int) -> Protocol | None:
        """Run the socket with the protocol its record asks for; None if it is gone."""
        slot = RemoteSlot(record.connection_id, self._channel())
        protocol: Protocol
        try:
            family = _family(descriptor)
            factory = self._host.connection_factory()
            if record.transport == TCP:
                protocol = factory.route(record.header, slot)
            else:
                if self._websockets is None:
                    from replayserver.workers.recording import ReplayedWebSocketFactory

                    self._websockets = ReplayedWebSocketFactory(factory)  # first WebSocket
                protocol = self._websockets.connection(slot)
            # The adopted socket is a duplicate: this one is ours to close.
            self._reactor.adoptStreamConnection(descriptor, family, Adopting(protocol))
        except OSError as error:  # the peer went away meanwhile
            self._log.info("Handed-off connection of game {game_id} was already closed: "
                           "{error}", game_id=record.header.game_id, error=error)
            slot.release()
            return None
        finally:
            os.close(descriptor)
        return protocol

    def _answer(self, query: dict[str, Any]) -> None:
        query_id = query.get("id")
        answer = defer.maybeDeferred(self._host.answer, query)

        def failed(failure: Failure) -> dict[str, Any]:
            self._log.failure("Answering {what!r} failed", failure, what=query.get("what"))
            return {"id": query_id, "error": failure.getErrorMessage()}

        answer.addCallbacks(lambda result: {"id": query_id, "result": result}, failed)
        answer.addCallback(self._reply)

    def _reply(self, reply: dict[str, Any]) -> None:
        try:
            data = json_frame(REPLY, reply)
        except (WireError, TypeError, ValueError) as error:
            self._log.warn("The answer to query {id} cannot be sent ({error})",
                           id=reply["id"], error=error)
            data = json_frame(REPLY, {"id": reply["id"], "error": f"unanswerable: {error}"})
        self._channel().write(data)


def _family(descriptor: int) -> socket.AddressFamily:
    """The address family of a socket descriptor (AF_INET or AF_INET6)."""
    probe = socket.socket(fileno=descriptor)
    try:
        return probe.family
    finally:
        probe.detach()
