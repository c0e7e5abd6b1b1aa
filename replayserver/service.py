"""The replay server of one process: games, saving, and (unless it is a worker) its listeners.

`ReplayService` is what ``twistd replayserver`` runs with ``server.workers`` at 0 or 1, and
what each worker process runs in worker mode (``worker=True``: no listeners; the listening
process hands it connections whose header it has read, through ``route``).

Made (``__init__``): the vault, the spool, the database (if configured), the saver, the game
registry with admission, the connection factory; then ``bind`` listens (a port in use stops
the start with one line). Start: the vault's thread pool, the spool's flush timer, crash
recovery (in the background). Stop (SIGTERM/SIGINT through twistd): stop listening, end every
running game and wait until all of them are saved (at most ``server.shutdown_timeout``; what is
not saved by then stays in the spool for the next start), then stop the spool, the database
and the thread pool. The Deferred returned by stopService makes twistd wait for all of it.

Optional parts are imported only when configured (a process imports only what its
configuration uses): the database driver, the HTTP site, the WebSocket library, Bugsnag.
"""
from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from replayserver.accept.handshake import ConnectionHeader, ConnectionKind
from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import Config, check_directory
from replayserver.deadlines import Deadlines
from replayserver.game.admission import Admission, IAdmission, NoAdmission
from replayserver.game.registry import GameRegistry
from replayserver.limits import ConnectionCounter, Slot
from replayserver.listeners import HealthCheck, Listeners
from replayserver.metrics import Metrics
from replayserver.receive.beat import ReadBeat
from replayserver.receive.writer import WriterProtocol
from replayserver.save.interfaces import IMetadataSource, IReplayIndex, NullIndex
from replayserver.save.metadata import HeaderMetadata
from replayserver.save.recovery import Recovery
from replayserver.save.saver import ReplaySaver
from replayserver.save.spool import Spool, SpoolLock
from replayserver.save.vault import Vault
from replayserver.send.reader import ReaderProtocol
from replayserver.upkeep import add_upkeep

#: Worker threads that compress replays (zstd releases the GIL while it works).
VAULT_THREADS = 4
#: Seconds between samples of the gauges that no event updates (reader lag).
METRICS_SAMPLE_INTERVAL = 5.0


class ReplayService(MultiService):
    """The replay server in one process; other parts (Bugsnag, timers) are child services."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any, *, worker: bool = False) -> None:
        MultiService.__init__(self)
        self.config = config
        #: A worker process of `replayserver.workers`: no listener (the main process hands
        #: connections over to ``factory``), and the vault's leftovers are not its business.
        self.worker = worker
        self.reactor = reactor
        #: Kept where they can be read: /metrics here, or the listening process's.
        self.metrics = Metrics(exported=worker or config.server.http_listen is not None)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=VAULT_THREADS, name="vault")
        storage, replay, limits = config.storage, config.replay, config.limits
        check_directory("storage.vault", storage.vault)
        check_directory("storage.spool", storage.spool)
        #: One server per spool (a worker's spool is inside its listening process's, locked).
        self.spool_lock = None if worker else SpoolLock.take(storage.spool)
        self.vault = Vault(storage.vault, self.threadpool, storage.compression_level,
                           reactor=reactor)
        self.spool = Spool(storage.spool, reactor)
        self._database: Any = None
        metadata, index = self._metadata_and_index()
        self.saver = ReplaySaver(
            clock=reactor, vault=self.vault, metadata=metadata, index=index,
            metrics=self.metrics,
        )
        self.registry = GameRegistry(
            clock=reactor, replay=replay, limits=limits, saver=self.saver, spool=self.spool,
            metrics=self.metrics, admission=self._admission(),
        )
        self.recovery = Recovery(self.spool, self.saver, self.registry, quorum=replay.quorum,
                                 comparison_window=replay.comparison_window)
        self.deadlines = Deadlines(reactor)
        self.beat = ReadBeat(reactor, config.server.read_interval)
        connections = None if worker else ConnectionCounter(limits.connections_per_peer,
                                                             limits.connections)
        self.factory = ConnectionFactory(
            self.route, deadlines=self.deadlines, header_timeout=config.server.header_timeout,
            partial_header_timeout=limits.partial_header_timeout, metrics=self.metrics,
            connections=connections,
        )
        self.listeners = Listeners(reactor)
        self._gave_up = False  # saves were given up at shutdown
        add_upkeep(self, config, reactor, self.metrics)
        self._sampler = LoopingCall(self._sample_metrics)
        self._sampler.clock = reactor

    def route(self, header: ConnectionHeader, slot: Slot) -> Protocol:
        """The protocol that serves a connection with this header."""
        if header.kind is ConnectionKind.WRITER:
            return WriterProtocol(self.registry, header.game_id, header.name,
                                  metrics=self.metrics, limits=self.config.limits,
                                  beat=self.beat, slot=slot)
        return ReaderProtocol(self.registry, header.game_id, header.name, metrics=self.metrics,
                              limits=self.config.limits, deadlines=self.deadlines, slot=slot)

    def _metadata_and_index(self) -> tuple[IMetadataSource, IReplayIndex]:
        header_metadata = HeaderMetadata()
        settings = self.config.database
        if settings is None:
            return header_metadata, NullIndex()
        from replayserver.save import database  # the driver only when configured

        self._database = database.open_database(settings, self.reactor)
        return (database.DatabaseMetadata(self._database, header_metadata, self.reactor,
                                          settings.missing_row_timeout),
                database.DatabaseIndex(self._database))

    def _admission(self) -> IAdmission:
        if not self.config.requires_live_game:
            return NoAdmission()
        settings = self.config.database
        assert settings is not None and self._database is not None
        return Admission(self._database, self.reactor, wait=self.config.admission.wait,
                         forced_end=self.config.replay.forced_end,
                         concurrency=max(1, settings.pool_size // 2))

    def bind(self) -> None:
        """Listen (before the reactor runs); raises `ConfigError` naming the listener's key."""
        server = self.config.server
        self.listeners.bind("server.listen", server.listen, self.factory,
                            "Replay server listening on {address}; vault {vault}, spool {spool}")
        if server.websocket_listen is not None:
            from replayserver.accept.websocket import WebSocketFactory  # only when configured

            self.listeners.bind("server.websocket_listen", server.websocket_listen,
                                WebSocketFactory(self.factory), "WebSocket listener on {address}")
        if server.http_listen is not None:
            self.listeners.bind_http(server.http_listen, self._site())

    def health_checks(self) -> dict[str, HealthCheck]:
        """What ``/healthz`` checks of this process (a worker's are asked by the listening
        process): the listeners, the vault, the database."""
        checks: dict[str, HealthCheck] = {"vault": self.vault.check}
        if not self.worker:
            checks["listeners"] = self.listeners.check
        if self._database is not None:
            checks["database"] = self._database.ping
        return checks

    def _site(self) -> Any:
        from replayserver import http  # only when configured

        registry = self.metrics.registry
        assert registry is not None  # exported with http_listen
        return http.OperatorSite(metrics=http.registry_text(registry),
                                 live=http.RegistryLive(self.registry),
                                 checks=self.health_checks(), clock=self.reactor)

    def startService(self) -> None:
        self.threadpool.start()
        if not self.worker:  # with workers, the main process does it before they start
            self.vault.remove_leftovers()
        self.spool.start()
        self.recovery.start().addErrback(
            lambda failure: self.log.failure("Crash recovery failed", failure)
        )
        MultiService.startService(self)
        self._sampler.start(METRICS_SAMPLE_INTERVAL, now=False)
        self.listeners.announce(vault=self.vault.directory, spool=self.spool.directory)

    def _sample_metrics(self) -> None:
        games = self.registry.games()
        for game in games:
            game.report_received()
        self.metrics.reader_lag.set(max((game.reader_lag() for game in games), default=0))

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _saves_within(self, timeout: float) -> None:
        """Wait until every game and the recovery are saved; what still waits for a save
        ``timeout`` seconds from now is given up and stays in the spool (docs/saving.md)."""
        saving = defer.DeferredList([self.recovery.stop(), self.registry.stop()],
                                    consumeErrors=True)
        expiry = self.reactor.callLater(timeout, self._give_up_saves, timeout)
        await saving
        if expiry.active():
            expiry.cancel()

    def _give_up_saves(self, timeout: float) -> None:
        self._gave_up = True
        self.log.warn("Saves still waiting after server.shutdown_timeout ({timeout} s) are given"
                      " up; the spool keeps them for the next start", timeout=timeout)
        self.saver.abandon()

    async def _stop(self) -> None:
        await self.listeners.stop_replay()
        games = self.registry.games()
        self.log.info("Shutting down: ending and saving {count} games", count=len(games))
        await self._saves_within(self.config.server.shutdown_timeout)
        self.beat.stop()
        if self._sampler.running:
            self._sampler.stop()
        await MultiService.stopService(self)  # error reports still in line are sent
        await self.listeners.stop_http()  # /metrics and /healthz served until now
        await self.spool.stop()
        if self._database is not None:
            self._database.close()
        self.threadpool.stop()
        if self.spool_lock is not None:
            self.spool_lock.release()
        if self._gave_up:
            self.log.warn("Stopped; the games not saved stay in the spool for the next start")
        else:
            self.log.info("All games saved; stopped")
