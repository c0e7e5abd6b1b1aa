"""The main process's side of the hand-off: sockets go to the worker that owns their game.

The listeners' `ConnectionFactory` routes every connection whose header is read to a
`HandoffProtocol` (`Dispatcher.route`), which stops reading and, on the next reactor turn,
gives the socket to the `Dispatcher`. The dispatcher sends it over the owning worker's
`WorkerChannel` (the fd by ``sendFileDescriptor``, then a `HandedOff` record) and closes the
main process's copy when the worker acknowledges it, without a FIN (`release`), so the worker
is the only holder. While a worker is restarting, its connections wait (not read) in the
dispatcher. A WebSocket connection is recorded from its first byte and replayed in the worker
(`replayserver.workers.recording`), which continues it from there.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.accept.handshake import ConnectionHeader
from replayserver.limits import PeerSlot
from replayserver.workers.wire import (
    ACK,
    CONFIG,
    QUERY,
    REPLY,
    TCP,
    WEBSOCKET,
    FrameReader,
    HandedOff,
    WireError,
    json_frame,
    worker_for,
)


def release(tcp: ITransport) -> None:
    """Close this process's copy of a socket that another process holds: no FIN is sent.

    A transport's ``loseConnection`` shuts its socket down before closing it, which would end
    the connection for the worker too. So the transport's descriptor is first pointed at a
    fresh, unconnected socket (``dup2`` closes this process's reference to the real socket
    atomically); ``loseConnection`` then shuts down and closes only that placeholder.
    """
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        os.dup2(placeholder.fileno(), tcp.fileno())
    finally:
        placeholder.close()
    tcp.loseConnection()


class WorkerChannel(Protocol):
    """The main process's end of one worker's UNIX socket (one per worker process)."""

    _log = Logger()

    def __init__(self, index: int) -> None:
        self.index = index
        self._frames = FrameReader()
        self._unacknowledged: collections.deque[ITransport] = collections.deque()
        self._queries: dict[int, defer.Deferred] = {}
        self._query_ids = itertools.count()
        self.lost = defer.Deferred()  # fires when the channel closes (the worker is gone)

    @property
    def unacknowledged(self) -> int:
        return len(self._unacknowledged)

    def send_config(self, config: dict[str, Any]) -> None:
        self.transport.write(json_frame(CONFIG, config))

    def hand_off(self, tcp: ITransport, record: HandedOff) -> None:
        """Send the socket and its record; our copy is closed once the worker has it."""
        self.transport.sendFileDescriptor(tcp.fileno())
        self.transport.write(record.encode())
        self._unacknowledged.append(tcp)

    def query(self, what: dict[str, Any]) -> defer.Deferred:
        """Ask the worker (``{"what": "metrics" | "games" | "game", ...}``); fires with its answer."""
        query_id = next(self._query_ids)
        answer = defer.Deferred()
        self._queries[query_id] = answer
        self.transport.write(json_frame(QUERY, {**what, "id": query_id}))
        return answer

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except WireError as error:
            self._log.error("Worker {index} sent bad data ({error}); dropping it",
                            index=self.index, error=error)
            self.transport.abortConnection()
            return
        for kind, payload in frames:
            if kind == ACK:
                release(self._unacknowledged.popleft())
            elif kind == REPLY:
                reply = json.loads(payload)
                answer = self._queries.pop(reply["id"], None)
                if answer is not None:
                    answer.callback(reply["result"])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The worker is gone: connections it may not have adopted are closed normally.
        while self._unacknowledged:
            self._unacknowledged.popleft().loseConnection()
        queries, self._queries = self._queries, {}
        for answer in queries.values():
            answer.errback(Failure(ConnectionLost(f"worker {self.index} is gone")))
        self.lost.callback(None)


class WorkerChannelFactory(Factory):
    """Makes the `WorkerChannel` of one worker process (the socketpair end is adopted)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def buildProtocol(self, addr) -> WorkerChannel:
        return WorkerChannel(self.index)


class Dispatcher:
    """Routes each connection to the worker that owns its game; holds them while it restarts."""

    _log = Logger()

    def __init__(self, count: int, clock: IReactorTime) -> None:
        self.count = count
        self._clock = clock
        self._channels: list[WorkerChannel | None] = [None] * count
        self._waiting: list[list[tuple[ITransport, HandedOff]]] = [[] for _ in range(count)]

    def attach(self, channel: WorkerChannel) -> None:
        """A worker (re)started: send it what waited for it."""
        index = channel.index
        self._channels[index] = channel
        channel.lost.addCallback(lambda _: self._detach(channel))
        waiting, self._waiting[index] = self._waiting[index], []
        for tcp, record in waiting:
            if tcp.connected:
                channel.hand_off(tcp, record)

    def _detach(self, channel: WorkerChannel) -> None:
        if self._channels[channel.index] is channel:
            self._channels[channel.index] = None

    def route(self, header: ConnectionHeader, slot: PeerSlot) -> Protocol:
        """The protocol of a connection whose header is read: it is handed to its worker."""
        return HandoffProtocol(self, header, self._clock, slot)

    def hand_off(self, tcp: ITransport, record: HandedOff) -> None:
        index = worker_for(record.header.game_id, self.count)
        channel = self._channels[index]
        if channel is None:
            self._waiting[index].append((tcp, record))
        else:
            channel.hand_off(tcp, record)

    def channels(self) -> list[WorkerChannel]:
        return [channel for channel in self._channels if channel is not None]

    def channels_by_index(self) -> list[WorkerChannel | None]:
        return list(self._channels)

    def channel(self, index: int) -> WorkerChannel | None:
        return self._channels[index]

    def in_flight(self) -> int:
        """Connections not yet owned by a worker (waiting or unacknowledged)."""
        waiting = sum(len(queue) for queue in self._waiting)
        return waiting + sum(channel.unacknowledged for channel in self.channels())

    def close_waiting(self) -> None:
        """Shutdown: close the connections of workers that are not running."""
        for index, queue in enumerate(self._waiting):
            self._waiting[index] = []
            for tcp, _ in queue:
                tcp.loseConnection()


class HandoffProtocol(Protocol):
    """What a connection becomes in the main process once its header is known."""

    def __init__(self, dispatcher: Dispatcher, header: ConnectionHeader,
                 clock: IReactorTime, slot: PeerSlot) -> None:
        self._dispatcher = dispatcher
        self._header = header
        self._clock = clock
        self._slot = slot
        self._leftover: list[bytes] = []
        self._pending = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        # The leftover bytes of the header's read come right after this call.
        self._pending = self._clock.callLater(0, self._send)

    def dataReceived(self, data: bytes) -> None:
        self._leftover.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._slot.release()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()

    def _send(self) -> None:
        self._pending = None
        # A WebSocket connection's adapter transport names the recorded connection.
        websocket = getattr(self.transport, "connection", None)
        if websocket is not None:
            tcp, record = websocket.transport, HandedOff(WEBSOCKET, self._header,
                                                         websocket.recorded())
        else:
            tcp, record = self.transport, HandedOff(TCP, self._header, b"".join(self._leftover))
        if tcp.connected:
            self._dispatcher.hand_off(tcp, record)
