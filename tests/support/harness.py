"""An in-memory server for protocol and game tests: the real registry, connection factory,
protocols, merge and spool on a `Clock`, with a fake saver and transports instead of sockets.
"""
from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from replayserver.accept.handshake import ConnectionHeader, ConnectionKind
from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import LimitsSection, ReplaySection
from replayserver.deadlines import Deadlines
from replayserver.game.admission import IAdmission
from replayserver.game.interfaces import IGameSpool, ISaver, SavedReplay
from replayserver.game.registry import GameRegistry
from replayserver.limits import ConnectionCounter, PeerSlot
from replayserver.merge.canonical import CanonicalReplay
from replayserver.metrics import Metrics
from replayserver.receive.beat import ReadBeat
from replayserver.receive.writer import WriterProtocol
from replayserver.save.saver import scan_ticks
from replayserver.save.spool import Spool
from replayserver.send.reader import ReaderProtocol

DELAY = 300
GRACE = 30
FORCED = 18000


def replay_settings(**overrides: Any) -> ReplaySection:
    """The `replay` configuration section, with production values unless overridden."""
    values: dict[str, Any] = dict(delay=DELAY, grace_period=GRACE, forced_end=FORCED)
    values.update(overrides)
    return ReplaySection(**values)


def limits(**overrides: Any) -> LimitsSection:
    """The ``limits`` section: defaults, with ``overrides``."""
    return LimitsSection(**overrides)


@implementer(ISaver)
class FakeSaver:
    """Records save calls; each returns a Deferred that the test fires via `finish`."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, CanonicalReplay, float, float, IGameSpool]] = []
        self.pending: dict[int, defer.Deferred[SavedReplay]] = {}
        self.saved_ids: set[int] = set()

    def save(self, game_id: int, replay: CanonicalReplay, launched_at: float, ended_at: float,
             spool: IGameSpool) -> defer.Deferred[SavedReplay]:
        self.calls.append((game_id, replay, launched_at, ended_at, spool))
        self.pending[game_id] = defer.Deferred()
        return self.pending[game_id]

    def is_saved(self, game_id: int) -> defer.Deferred[bool]:
        return defer.succeed(game_id in self.saved_ids)

    def finish(self, game_id: int, error: Exception | None = None) -> None:
        deferred = self.pending.pop(game_id)
        if error is not None:
            deferred.errback(error)
        else:
            self.saved_ids.add(game_id)
            canonical = next(call[1] for call in self.calls if call[0] == game_id)
            body = canonical.body()
            assert canonical.header_raw is not None
            deferred.callback(SavedReplay(f"vault/{game_id}.fafreplay",
                                          ticks=scan_ticks([body]).count,
                                          size=len(canonical.header_raw) + len(body)))


class Server:
    """Registry, connection factory, protocols, real spool and metrics on a Clock: everything
    but sockets. ``limits`` and ``read_interval`` as the configuration would give them."""

    def __init__(
        self, testcase: SynchronousTestCase, clock: IReactorTime | None = None, *,
        limits: LimitsSection | None = None, admission: IAdmission | None = None,
        read_interval: float = 0, counted: bool = True, **replay: Any,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.metrics = Metrics()
        self.saver = FakeSaver()
        self.limits = limits if limits is not None else LimitsSection()
        spool_directory = tempfile.mkdtemp(prefix="replayserver-test-spool-")
        testcase.addCleanup(shutil.rmtree, spool_directory, True)
        self.spool = Spool(spool_directory, self.clock)  # flushed when streams close
        testcase.addCleanup(self.spool.stop)
        self.registry = GameRegistry(
            clock=self.clock, replay=replay_settings(**replay), limits=self.limits,
            saver=self.saver, spool=self.spool, metrics=self.metrics, admission=admission,
        )
        self.deadlines = Deadlines(self.clock)
        self.beat = ReadBeat(self.clock, read_interval)
        testcase.addCleanup(self.beat.stop)
        self.connections = (ConnectionCounter(self.limits.connections_per_peer,
                                              self.limits.connections) if counted else None)
        self.factory = ConnectionFactory(
            self.route, deadlines=self.deadlines, header_timeout=21600,
            partial_header_timeout=self.limits.partial_header_timeout, metrics=self.metrics,
            connections=self.connections,
        )

    def route(self, header: ConnectionHeader, slot: PeerSlot) -> Protocol:
        if header.kind is ConnectionKind.WRITER:
            return WriterProtocol(self.registry, header.game_id, header.name,
                                  metrics=self.metrics, limits=self.limits, beat=self.beat,
                                  slot=slot)
        return ReaderProtocol(self.registry, header.game_id, header.name, metrics=self.metrics,
                              limits=self.limits, deadlines=self.deadlines, slot=slot)

    def connect(self, data: bytes = b"", host: str = "127.0.0.1", port: int = 40000
                ) -> tuple[Protocol, StringTransportWithDisconnection]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        if data:
            protocol.dataReceived(data)
        return protocol, transport

    def writer(self, game_id: int, name: str = "w.SCFAreplay", data: bytes = b""
               ) -> tuple[Protocol, StringTransportWithDisconnection]:
        return self.connect(b"P/%d/%s\0" % (game_id, name.encode()) + data)

    def reader(self, game_id: int, name: str = "r.SCFAreplay"
               ) -> tuple[Protocol, StringTransportWithDisconnection]:
        return self.connect(b"G/%d/%s\0" % (game_id, name.encode()))

    def tick(self, seconds: int) -> None:
        """Advance the clock one second at a time (the delay samples every second)."""
        self.clock.pump([1] * seconds)

    def served(self, result: str) -> float:
        return self.sample("replayserver_served_connections_total", {"result": result})

    def active(self, category: str) -> float:
        return self.sample("replayserver_active_connections_count", {"category": category})

    def gauge(self, name: str) -> float:
        return self.sample(name)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0


def send(protocol: Protocol, data: bytes, chunk: int = 1000) -> None:
    for start in range(0, len(data), chunk):
        protocol.dataReceived(data[start:start + chunk])
