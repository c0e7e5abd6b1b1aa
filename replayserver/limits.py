"""Connections counted per peer and in total, against ``limits.connections_per_peer`` and
``limits.connections`` (docs/operations.md).

`ConnectionCounter` counts the connections of the whole server, per peer address and in total,
and says which limit a new one would exceed. A connection takes its place (`PeerSlot`) at its
accept, in the process that listens, and the place follows the connection until it closes:
with worker processes, the listening process keeps it while a worker runs the connection, until
the worker says it closed. So a limit means the same in both modes.
"""
from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IAddress

from replayserver.metrics import Metrics


def peer_host(peer: IAddress) -> str:
    """The address a peer is counted under (its IP address; the port does not matter)."""
    return getattr(peer, "host", None) or str(peer)


def count_limited(metrics: Metrics, kind: str, limit: str, refused: bool = True) -> None:
    """Count a connection that a limit (named by its configuration key) refused or dropped."""
    metrics.limited_connections.labels(limit=limit).inc()
    if refused:
        metrics.refused_connections.labels(kind=kind, reason="limit").inc()


class ConnectionCounter:
    """Open connections per peer address and in total, against their limits (None = none)."""

    def __init__(self, per_peer: int | None, total: int | None) -> None:
        self._per_peer = per_peer
        self._total = total
        self._by_peer: dict[str, int] = {}
        self.total = 0

    def admit(self, peer: IAddress) -> str | None:
        """Count a new connection; or, if it would exceed a limit, the limit's key (not counted)."""
        host = peer_host(peer)
        if self._total is not None and self.total >= self._total:
            return "connections"
        held = self._by_peer.get(host, 0)
        if self._per_peer is not None and held >= self._per_peer:
            return "connections_per_peer"
        self._by_peer[host] = held + 1
        self.total += 1
        return None

    def release(self, peer: IAddress) -> None:
        """An admitted connection closed."""
        host = peer_host(peer)
        held = self._by_peer[host] - 1
        if held:
            self._by_peer[host] = held
        else:
            del self._by_peer[host]
        self.total -= 1

    def from_peer(self, peer: IAddress) -> int:
        """Connections counted now for ``peer``'s address."""
        return self._by_peer.get(peer_host(peer), 0)


class Slot(Protocol):
    """A connection's place in the server's connection count, as the protocols that serve the
    connection see it: a `PeerSlot`, or in a worker process the place that the listening
    process holds for a connection handed to it
    (`replayserver.workers.receiver.RemoteSlot`)."""

    @property
    def held(self) -> bool: ...

    def take(self, peer: IAddress) -> str | None: ...

    def release(self) -> None: ...


class PeerSlot:
    """One connection's place in a `ConnectionCounter` (or in none), held until released."""

    __slots__ = ("_counter", "_peer")

    def __init__(self, counter: ConnectionCounter | None) -> None:
        self._counter = counter
        self._peer: IAddress | None = None  # set while the slot is held

    @property
    def held(self) -> bool:
        return self._peer is not None

    def take(self, peer: IAddress) -> str | None:
        """Hold a place for ``peer``; or, over a limit, that limit's key (nothing held)."""
        if self._counter is None:
            return None
        limit = self._counter.admit(peer)
        if limit is None:
            self._peer = peer
        return limit

    def release(self) -> None:
        """Give the place back (once; nothing if none was held)."""
        peer, self._peer = self._peer, None
        if peer is not None and self._counter is not None:
            self._counter.release(peer)
