"""The limits (configuration section ``limits``): their defaults, and connections counted per peer.

`ConnectionCounter` counts the connections a process holds, per peer address and in total, and
says which limit a new one would exceed. Where it counts: in a single process, every connection
from its accept to its close (`ConnectionProtocol`). With worker processes, the main process
counts the connections it holds (from the accept until a worker has adopted the socket: the
header phase, where idle connections wait), and each worker counts the writers and readers it
runs (`WriterProtocol`, `ReaderProtocol`); so a peer may hold up to the per-peer limit in the
main process and as many in each worker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress

from replayserver.config import SCHEMA, Values

if TYPE_CHECKING:
    from replayserver.metrics import Metrics


def default_limits() -> Values:
    """The ``limits`` section with every key at its default."""
    return Values({key: setting.default for key, setting in SCHEMA["limits"].settings.items()})


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


class PeerSlot:
    """One connection's place in a `ConnectionCounter` (or in none), held until released."""

    def __init__(self, counter: ConnectionCounter | None) -> None:
        self._counter = counter
        self._peer: IAddress | None = None  # set while the slot is held

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
        if peer is not None:
            self._counter.release(peer)
