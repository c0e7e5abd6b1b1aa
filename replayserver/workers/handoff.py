"""The main process's side of the hand-off: sockets go to the worker that owns their game.

The listeners' `ConnectionFactory` routes every connection whose header is read to a
`HandoffProtocol` (`Dispatcher.route`), which stops reading and, on the next reactor turn,
gives the connection to the `Dispatcher`. The dispatcher sends it over the owning worker's
`WorkerChannel` (the fd by ``sendFileDescriptor``, then a `HandedOff` record with a connection
id) and closes the main process's copy when the worker acknowledges it, without a FIN
(`release`), so the worker is the only holder. A WebSocket connection is recorded from its
first byte and replayed in the worker (`replayserver.workers.recording`), which continues it
from there.

The connection keeps its place in the server's connection count (its slot,
`replayserver.limits`) until the worker says it closed (``CLOSED`` with its id) or the worker
dies: so ``limits.connections`` and ``limits.connections_per_peer`` count the whole server.

While a worker is restarting, its connections wait (not read) in the dispatcher, at most
``limits.worker_queue`` of them in all (and at most `QUEUE_BYTES` of what they sent before
their header: a WebSocket recording can be over 1 MiB), each at most
``limits.worker_queue_timeout`` seconds; the others are closed, logged and counted as refused
by that limit (docs/operations.md, "Worker processes" and "Limits").
"""
from __future__ import annotations

import collections
import itertools
import os
import socket
from typing import Any, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IFileDescriptor,
    ITCPTransport,
    ITransport,
    IUNIXTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.accept.handshake import ConnectionHeader
from replayserver.config import LimitsSection
from replayserver.deadlines import Deadline, Deadlines
from replayserver.limits import Slot, count_limited
from replayserver.metrics import Metrics
from replayserver.outcomes import ConnectionResult
from replayserver.workers.placement import worker_for
from replayserver.workers.wire import (
    ACK,
    CLOSED,
    CONFIG,
    QUERY,
    REPLY,
    TCP,
    WEBSOCKET,
    FrameReader,
    HandedOff,
    WireError,
    closed_id,
    json_frame,
    json_payload,
)


#: Most bytes (recordings and leftovers) held by the connections waiting for restarting workers.
QUEUE_BYTES = 64 << 20


class QueryFailed(Exception):
    """A worker could not answer a query (it said why)."""


class WorkerGone(QueryFailed):
    """The worker asked has gone before it answered."""


def release(tcp: ITransport) -> None:
    """Close this process's copy of a socket that another process holds: no FIN is sent.

    A transport's ``loseConnection`` shuts its socket down before closing it, which would end
    the connection for the worker too. So the transport's descriptor is first pointed at a
    fresh, unconnected socket (``dup2`` closes this process's reference to the real socket
    atomically); ``loseConnection`` then shuts down and closes only that placeholder.
    """
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        os.dup2(placeholder.fileno(), IFileDescriptor(tcp).fileno())
    finally:
        placeholder.close()
    tcp.loseConnection()


class Recorded(TypingProtocol):
    """A WebSocket connection recorded for its worker
    (`replayserver.workers.recording.RecordingWebSocketConnection`)."""

    transport: Any  # its TCP transport

    @property
    def recorded_size(self) -> int: ...

    def recorded(self) -> bytes: ...


class WorkerChannel(Protocol):
    """The main process's end of one worker's UNIX socket (one per worker process)."""

    _log = Logger()

    def __init__(self, index: int, clock: IReactorTime) -> None:
        self.index = index
        self._clock = clock
        self._frames = FrameReader()
        self._unacknowledged: collections.deque[HandoffProtocol] = collections.deque()
        self._sent_at: collections.deque[float] = collections.deque()  # of each, same order
        self._last_ack = 0.0  # when the worker last took a connection
        #: The slots of the connections sent to this worker, by id, until it says they closed.
        self._held: dict[int, Slot] = {}
        self._queries: dict[int, defer.Deferred[Any]] = {}
        self._query_ids = itertools.count()
        #: Fires when the channel closes (the worker is gone).
        self.lost: defer.Deferred[None] = defer.Deferred()

    @property
    def unacknowledged(self) -> int:
        return len(self._unacknowledged)

    def waited(self) -> float:
        """How long connections sent to the worker have waited without the worker taking any
        of them (0 if none waits). A busy worker takes them late but keeps taking them; a
        worker that takes none for long is hung (stopped, deadlocked)."""
        if not self._sent_at:
            return 0.0
        return self._clock.seconds() - max(self._sent_at[0], self._last_ack)

    def _channel(self) -> IUNIXTransport:
        assert self.transport is not None
        return IUNIXTransport(self.transport)

    def send_config(self, config: dict[str, Any]) -> None:
        self._channel().write(json_frame(CONFIG, config))

    def hand_off(self, connection: HandoffProtocol, connection_id: int) -> None:
        """Send the socket and its record; our copy is closed once the worker has it."""
        tcp, record = connection.outgoing(connection_id)
        channel = self._channel()
        channel.sendFileDescriptor(IFileDescriptor(tcp).fileno())
        channel.write(record.encode())
        self._unacknowledged.append(connection)
        self._sent_at.append(self._clock.seconds())
        self._held[connection_id] = connection.slot

    def query(self, what: dict[str, Any]) -> defer.Deferred[Any]:
        """Ask the worker (``{"what": "metrics" | "games" | "game" | "health", ...}``); fires
        with its answer, or fails with `QueryFailed` (`WorkerGone` if the worker goes first)."""
        query_id = next(self._query_ids)
        answer: defer.Deferred[Any] = defer.Deferred()
        self._queries[query_id] = answer
        self._channel().write(json_frame(QUERY, {**what, "id": query_id}))
        return answer

    def dataReceived(self, data: bytes) -> None:
        try:
            for kind, payload in self._frames.feed(data):
                self._frame(kind, payload)
        except WireError as error:
            self._log.error("Worker {index} sent bad data ({error}); dropping it",
                            index=self.index, error=error)
            ITCPTransport(self.transport).abortConnection()

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind == ACK:
            if not self._unacknowledged:
                raise WireError("acknowledgement of no connection")
            connection = self._unacknowledged.popleft()
            self._sent_at.popleft()
            self._last_ack = self._clock.seconds()
            connection.handed_over()
        elif kind == CLOSED:
            slot = self._held.pop(closed_id(payload), None)
            if slot is None:
                raise WireError("closed record of an unknown connection")
            slot.release()
        elif kind == REPLY:
            reply = json_payload(payload)
            query_id = reply.get("id")
            answer = self._queries.pop(query_id, None) if isinstance(query_id, int) else None
            if answer is None:
                raise WireError(f"reply to no query: {query_id!r}")
            if "error" in reply:
                answer.errback(QueryFailed(f"worker {self.index}: {reply['error']}"))
            else:
                answer.callback(reply.get("result"))
        else:
            raise WireError(f"unknown frame type {kind!r}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The worker is gone: connections it may not have adopted are closed normally, and
        # the places of all its connections are given back.
        self._sent_at.clear()
        while self._unacknowledged:
            self._unacknowledged.popleft().close()
        held, self._held = self._held, {}
        for slot in held.values():
            slot.release()
        queries, self._queries = self._queries, {}
        for answer in queries.values():
            answer.errback(WorkerGone(f"worker {self.index} is gone"))
        self.lost.callback(None)


class WorkerChannelFactory(Factory):
    """Makes the `WorkerChannel` of one worker process (the socketpair end is adopted)."""

    def __init__(self, index: int, clock: IReactorTime) -> None:
        self.index = index
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> WorkerChannel:
        return WorkerChannel(self.index, self.clock)


class Dispatcher:
    """Routes each connection to the worker that owns its game; holds them while it restarts.

    ``limits.worker_queue`` bounds the connections waiting in all, and
    ``limits.worker_queue_timeout`` how long each may wait.
    """

    _log = Logger()

    def __init__(self, count: int, clock: IReactorTime, *, metrics: Metrics,
                 limits: LimitsSection) -> None:
        self.count = count
        self.clock = clock
        self.metrics = metrics
        self._queue_limit = limits.worker_queue
        self._queue_timeout = limits.worker_queue_timeout
        self._deadlines = Deadlines(clock)
        self._channels: list[WorkerChannel | None] = [None] * count
        self._waiting: list[dict[HandoffProtocol, Deadline]] = [{} for _ in range(count)]
        self._waiting_bytes = 0  # held by the waiting connections
        self._connection_ids = itertools.count()

    def attach(self, channel: WorkerChannel) -> None:
        """A worker (re)started: send it what waited for it."""
        index = channel.index
        self._channels[index] = channel
        channel.lost.addCallback(lambda _: self._detach(channel))
        waiting, self._waiting[index] = self._waiting[index], {}
        for connection, deadline in waiting.items():
            self._deadlines.cancel(deadline)
            self._waiting_bytes -= connection.held_bytes
            channel.hand_off(connection, next(self._connection_ids))

    def _detach(self, channel: WorkerChannel) -> None:
        if self._channels[channel.index] is channel:
            self._channels[channel.index] = None

    def route(self, header: ConnectionHeader, slot: Slot) -> Protocol:
        """The protocol of a connection whose header is read: it is handed to its worker."""
        return HandoffProtocol(self, header, slot)

    def hand_off(self, connection: HandoffProtocol) -> None:
        index = worker_for(connection.header.game_id, self.count)
        channel = self._channels[index]
        if channel is not None:
            channel.hand_off(connection, next(self._connection_ids))
        elif self.waiting() >= self._queue_limit:
            connection.refuse("worker_queue", f"{self._queue_limit} connections wait for"
                                              f" restarting workers")
        elif self._waiting_bytes + connection.held_bytes > QUEUE_BYTES:
            connection.refuse("worker_queue", f"the connections waiting for restarting workers"
                                              f" hold {QUEUE_BYTES} bytes")
        else:
            seconds = self._queue_timeout
            self._waiting_bytes += connection.held_bytes
            self._waiting[index][connection] = self._deadlines.add(
                seconds, lambda: self._expire(index, connection, seconds))

    def _expire(self, index: int, connection: HandoffProtocol, seconds: float) -> None:
        if self._stop_waiting(index, connection):
            connection.refuse("worker_queue_timeout",
                              f"waited {seconds:g} s for worker {index} to restart")

    def _stop_waiting(self, index: int, connection: HandoffProtocol) -> bool:
        deadline = self._waiting[index].pop(connection, None)
        if deadline is None:
            return False
        self._deadlines.cancel(deadline)
        self._waiting_bytes -= connection.held_bytes
        return True

    def forget(self, connection: HandoffProtocol) -> None:
        """A connection closed: it waits no more."""
        self._stop_waiting(worker_for(connection.header.game_id, self.count), connection)

    def channels(self) -> list[WorkerChannel]:
        return [channel for channel in self._channels if channel is not None]

    def channels_by_index(self) -> list[WorkerChannel | None]:
        return list(self._channels)

    def channel(self, index: int) -> WorkerChannel | None:
        return self._channels[index]

    def waiting(self) -> int:
        """Connections waiting for a restarting worker."""
        return sum(len(queue) for queue in self._waiting)

    def in_flight(self) -> int:
        """Connections not yet owned by a worker (waiting or unacknowledged)."""
        return self.waiting() + sum(channel.unacknowledged for channel in self.channels())

    def close_waiting(self) -> None:
        """Shutdown: close the connections of workers that are not running."""
        for index, queue in enumerate(self._waiting):
            self._waiting[index] = {}
            for connection, deadline in queue.items():
                self._deadlines.cancel(deadline)
                connection.close()
        self._waiting_bytes = 0


class HandoffProtocol(Protocol):
    """What a connection becomes in the main process once its header is known.

    It holds the connection's slot until the worker has the socket; then the worker's channel
    holds it, and closing this process's copy (`release`) gives nothing back.
    """

    _log = Logger()

    def __init__(self, dispatcher: Dispatcher, header: ConnectionHeader, slot: Slot) -> None:
        self._dispatcher = dispatcher
        self.header = header
        self.slot = slot
        self._leftover: list[bytes] = []
        self._pending: IDelayedCall | None = None
        self._handed_over = False

    def connectionMade(self) -> None:
        IPushProducer(self.transport).pauseProducing()
        # The leftover bytes of the header's read come right after this call.
        self._pending = self._dispatcher.clock.callLater(0, self._send)

    def dataReceived(self, data: bytes) -> None:
        self._leftover.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._dispatcher.forget(self)
        if not self._handed_over:
            self.slot.release()

    def _send(self) -> None:
        self._pending = None
        if self._tcp().connected:
            self._dispatcher.hand_off(self)

    def _recording(self) -> Recorded | None:
        """The recorded WebSocket connection, when this connection is one: the WebSocket
        adapter transport names it."""
        recorded: Recorded | None = getattr(self.transport, "connection", None)
        return recorded

    @property
    def held_bytes(self) -> int:
        """What this process holds of the connection: its WebSocket recording, or the bytes
        read after its header."""
        websocket = self._recording()
        if websocket is not None:
            return websocket.recorded_size
        return sum(len(data) for data in self._leftover)

    def _tcp(self) -> Any:
        websocket = self._recording()
        return self.transport if websocket is None else websocket.transport

    def outgoing(self, connection_id: int) -> tuple[ITransport, HandedOff]:
        """The socket to send to the worker, and its record."""
        websocket = self._recording()
        if websocket is not None:
            return websocket.transport, HandedOff(connection_id, WEBSOCKET, self.header,
                                                  websocket.recorded())
        return self._tcp(), HandedOff(connection_id, TCP, self.header,
                                      b"".join(self._leftover))

    def handed_over(self) -> None:
        """The worker has the socket: close this process's copy (without ending the
        connection); the slot stays held until the worker says the connection closed."""
        self._handed_over = True
        release(self._tcp())

    def close(self) -> None:
        """Close the connection here (it never reached a worker)."""
        self._tcp().loseConnection()

    def refuse(self, limit: str, why: str) -> None:
        """Close the connection as refused by ``limit`` (a ``limits.*`` key); logged once."""
        metrics = self._dispatcher.metrics
        count_limited(metrics, "connection", limit)
        metrics.served_connections.labels(result=ConnectionResult.REFUSED.value).inc()
        self._log.info(
            "Connection for game {game_id} from {peer} closed ({result}): limit {limit} reached"
            " ({why})", game_id=self.header.game_id, peer=self._tcp().getPeer(),
            result=ConnectionResult.REFUSED.value, limit=limit, why=why)
        self.close()
