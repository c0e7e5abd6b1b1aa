"""The worker's side of the hand-off: adopt each socket the main process sends and run it.

`HandoffReceiver` reads the worker's UNIX socket: received file descriptors queue up until
their `HandedOff` record is complete. A TCP connection is adopted with
``adoptStreamConnection`` straight into the writer or reader protocol its header asks for
(``factory.route``), and the bytes the main process had read after the header are fed to it
first. A WebSocket connection is adopted into a replayed WebSocket connection
(`replayserver.workers.recording`), which is fed every byte the main process had read. Each
record is acknowledged once adopted; queries from the main process are answered by the
`WorkerHost`. The listening process counts the connection against the limits; the worker
does not count it again.
"""
from __future__ import annotations

import collections
import json
import os
import socket
from typing import Any, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.accept.protocol import ConnectionFactory
from replayserver.limits import PeerSlot
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
    frame,
    json_frame,
)


class WorkerHost(TypingProtocol):
    """What the receiver drives (`replayserver.workers.worker.Worker`)."""

    def configure(self, config: dict[str, Any]) -> None: ...

    def connection_factory(self) -> ConnectionFactory: ...

    def answer(self, query: dict[str, Any]) -> Any: ...

    def main_lost(self) -> None: ...


class Adopting(Factory):
    """Gives ``adoptStreamConnection`` the protocol already chosen for the socket."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr) -> Protocol:
        return self._protocol


@implementer(IFileDescriptorReceiver)
class HandoffReceiver(Protocol):
    """The worker's end of its UNIX socket to the main process."""

    _log = Logger()

    def __init__(self, host: WorkerHost, reactor) -> None:
        self._host = host
        self._reactor = reactor
        self._frames = FrameReader()
        self._descriptors: collections.deque[int] = collections.deque()
        self._websockets: Factory | None = None

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._descriptors.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except WireError as error:
            self._log.error("Bad data from the main process ({error})", error=error)
            self.transport.abortConnection()
            return
        for kind, payload in frames:
            if kind == CONNECTION:
                self._adopt(HandedOff.decode(payload), self._descriptors.popleft())
                self.transport.write(frame(ACK))
            elif kind == QUERY:
                self._answer(json.loads(payload))
            elif kind == CONFIG:
                self._host.configure(json.loads(payload))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for descriptor in self._descriptors:
            os.close(descriptor)
        self._descriptors.clear()
        self._host.main_lost()

    def _adopt(self, record: HandedOff, descriptor: int) -> None:
        try:
            family = _family(descriptor)
            factory = self._host.connection_factory()
            if record.transport == TCP:
                protocol = factory.route(record.header, PeerSlot(None))
            else:
                if self._websockets is None:
                    from replayserver.workers.recording import ReplayedWebSocketFactory

                    self._websockets = ReplayedWebSocketFactory(factory)  # first WebSocket
                protocol = self._websockets.buildProtocol(None)
            # The adopted socket is a duplicate: this one is ours to close.
            if self._reactor.adoptStreamConnection(descriptor, family, Adopting(protocol)) is None:
                return
        except OSError as error:  # the peer went away meanwhile
            self._log.info("Handed-off connection of game {game_id} was already closed: "
                           "{error}", game_id=record.header.game_id, error=error)
            return
        finally:
            os.close(descriptor)
        if record.data:
            protocol.dataReceived(record.data)

    def _answer(self, query: dict[str, Any]) -> None:
        answer = defer.maybeDeferred(self._host.answer, query)
        answer.addErrback(lambda failure: self._log.failure(
            "Answering {what!r} failed", failure, what=query.get("what")) or None)
        answer.addCallback(lambda result: self.transport.write(
            json_frame(REPLY, {"id": query["id"], "result": result})))


def _family(descriptor: int) -> int:
    """The address family of a socket descriptor (AF_INET or AF_INET6)."""
    probe = socket.socket(fileno=descriptor)
    try:
        return probe.family
    finally:
        probe.detach()
