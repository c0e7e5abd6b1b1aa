"""What the connection, writer and reader protocols use of their transport.

A transport is a TCP connection or the WebSocket adapter (`replayserver.accept.websocket`); both
are byte-stream transports that are also push producers and consumers, which Twisted's
`ITransport` alone does not say. `transport_of` gives a protocol's transport with that type.
"""
from __future__ import annotations

from typing import Protocol as Structural
from typing import cast

from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Protocol


class Transport(Structural):
    """A byte-stream transport that can pause its reading and take a producer."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


def transport_of(protocol: Protocol) -> Transport:
    """The transport of a connected protocol (set by ``makeConnection``)."""
    return cast(Transport, protocol.transport)
