"""The worker's side of the hand-off: adopt each socket the main process sends and run it.

`HandoffReceiver` reads the worker's UNIX socket: received file descriptors queue up until
their `HandedOff` record is complete. A TCP connection is adopted with
``adoptStreamConnection`` straight into the writer or reader protocol its header asks for
(``factory.handler_for``), and the bytes the main process had read after the header are fed
to it first. A WebSocket connection is adopted into `ReplayedWebSocketConnection`, which is
fed every byte the main process had read: it goes through the upgrade again without
answering it (the main process did) and then runs as any WebSocket connection. Each record is
acknowledged once adopted; queries from the main process are answered by the `WorkerHost`.
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

from replayserver.accept.websocket import WebSocketConnection, WebSocketFactory
from replayserver.workers import (
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

    def connection_factory(self) -> Factory: ...

    def answer(self, query: dict[str, Any]) -> Any: ...

    def main_lost(self) -> None: ...


class ReplayedWebSocketConnection(WebSocketConnection):
    """A WebSocket connection replayed from its first byte: the upgrade answer is not sent."""

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if self.state == self.STATE_CONNECTING:
            return  # the main process has answered the upgrade already
        super().sendData(data, sync, chopsize)


class ReplayedWebSocketFactory(WebSocketFactory):
    protocol = ReplayedWebSocketConnection


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
        self._websockets: WebSocketFactory | None = None

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
                protocol = factory.handler_for(record.header)
            else:
                if self._websockets is None:
                    self._websockets = ReplayedWebSocketFactory(factory)
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
