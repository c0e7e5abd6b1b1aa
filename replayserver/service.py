"""The whole server as one Twisted MultiService, built from a checked Config.

Start: the vault's thread pool, the spool's flush timer, crash recovery (in the background),
then the listeners. Stop (SIGTERM/SIGINT through twistd): stop listening, end every running
game and wait until all of them are saved, then stop the spool and the thread pool. The
Deferred returned by stopService makes twistd wait for all of it.
"""
from __future__ import annotations

from prometheus_client.twisted import MetricsResource
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replayserver import http, reporting
from replayserver.accept.protocol import ConnectionFactory
from replayserver.accept.websocket import WebSocketFactory
from replayserver.config import Config, ConfigError
from replayserver.game.registry import GameRegistry
from replayserver.metrics import Metrics
from replayserver.save.admission import Admission, NoAdmission
from replayserver.save.interfaces import IMetadataSource, IReplayIndex, NullIndex
from replayserver.save.metadata import HeaderMetadata
from replayserver.save.recovery import Recovery
from replayserver.save.saver import ReplaySaver
from replayserver.save.spool import Spool
from replayserver.save.vault import Vault

#: Worker threads that compress replays (zstd releases the GIL while it works).
VAULT_THREADS = 4
#: Seconds between samples of the gauges that no event updates (reader lag).
METRICS_SAMPLE_INTERVAL = 5.0


def listen_now(reactor, description: str, factory) -> IListeningPort:
    """Listen on a Twisted endpoint now; a failure (port in use...) is raised here, so that it
    stops the start instead of being logged later."""
    listening = endpoints.serverFromString(reactor, description).listen(factory)
    outcome: list = []
    listening.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError(f"{description} did not start listening at once")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class ReplayService(MultiService):
    """The replay server; other parts (HTTP, WebSocket) are added as child services."""

    log = Logger()

    def __init__(self, config: Config, reactor, *, worker: bool = False) -> None:
        super().__init__()
        self.config = config
        #: A worker process of `replayserver.workers`: no listener (the main process hands
        #: connections over to ``factory``) and the vault's leftovers are not its business.
        self.worker = worker
        self.reactor = reactor
        self.metrics = Metrics()
        self.threadpool = ThreadPool(minthreads=0, maxthreads=VAULT_THREADS, name="vault")
        storage, replay = config.storage, config.replay
        self.vault = Vault(storage.vault, self.threadpool, storage.compression_level,
                           reactor=reactor)
        self.spool = Spool(storage.spool, reactor)
        self._database = None
        metadata, index = self._metadata_and_index()
        self.saver = ReplaySaver(
            clock=reactor, vault=self.vault, metadata=metadata, index=index,
            spool=self.spool, metrics=self.metrics,
        )
        self.registry = GameRegistry(
            clock=reactor, replay=replay, saver=self.saver, spool=self.spool,
            metrics=self.metrics, limits=config.limits,
        )
        self.recovery = Recovery(self.spool, self.saver, quorum=replay.quorum,
                                 comparison_window=replay.comparison_window)
        factory = ConnectionFactory(
            self.registry, clock=reactor, header_timeout=config.server.header_timeout,
            metrics=self.metrics, admission=self._admission(), limits=config.limits,
            handed_over=worker,
        )
        self.factory = factory
        self.port: IListeningPort | None = None
        self.websocket_port: IListeningPort | None = None
        self.http_port: IListeningPort | None = None
        reporter = reporting.reporter_from_config(config.bugsnag, reactor)
        if reporter is not None:
            reporter.setServiceParent(self)
        sampler = TimerService(METRICS_SAMPLE_INTERVAL, self._sample_metrics)
        sampler.clock = reactor
        sampler.setServiceParent(self)

    def _metadata_and_index(self) -> tuple[IMetadataSource, IReplayIndex]:
        header_metadata = HeaderMetadata()
        if self.config.database is None:
            return header_metadata, NullIndex()
        from replayserver.save.database import DatabaseIndex, DatabaseMetadata, open_database

        self._database = open_database(self.config.database, self.reactor)
        return (DatabaseMetadata(self._database, header_metadata, self.reactor,
                                 self.config.database.missing_row_timeout),
                DatabaseIndex(self._database))

    def _admission(self) -> Admission | NoAdmission:
        if not self.config.admission.require_live_game:
            return NoAdmission()
        if self._database is None:
            raise ConfigError("admission.require_live_game", "needs a database section")
        return Admission(self._database.game_state, self.reactor,
                         wait=self.config.admission.wait,
                         forced_end=self.config.replay.forced_end)

    def startService(self) -> None:
        self.threadpool.start()
        if not self.worker:  # with workers, the main process does it before they start
            self.vault.remove_leftovers()
        self.spool.start()
        self.recovery.start().addErrback(
            lambda failure: self.log.failure("Crash recovery failed", failure)
        )
        super().startService()
        if self.worker:
            return
        server = self.config.server
        self.port = listen_now(self.reactor, server.listen, self.factory)
        self.log.info("Replay server listening on {address}; vault {vault}, spool {spool}",
                      address=self.port.getHost(), vault=self.vault.directory,
                      spool=self.spool.directory)
        if server.websocket_listen is not None:
            self.websocket_port = listen_now(self.reactor, server.websocket_listen,
                                               WebSocketFactory(self.factory))
            self.log.info("WebSocket listener on {address}",
                          address=self.websocket_port.getHost())
        if server.http_listen is not None:
            site = http.make_site(metrics=MetricsResource(self.metrics.registry),
                                  live=http.RegistryLive(self.registry),
                                  checks=self._health_checks(), clock=self.reactor)
            self.http_port = listen_now(self.reactor, server.http_listen, site)
            self.log.info("HTTP listener on {address}", address=self.http_port.getHost())

    def _health_checks(self) -> dict[str, http.HealthCheck]:
        checks = {"listeners": self._listening, "vault": http.vault_writable(self.vault.directory)}
        if self._database is not None:
            database = self._database
            checks["database"] = lambda: database.run(lambda cursor: cursor.execute("SELECT 1"))
        return checks

    def _listening(self) -> None:
        """Health check: the replay listeners accept connections."""
        if self.port is None or (self.config.server.websocket_listen is not None
                                 and self.websocket_port is None):
            raise RuntimeError("the replay listeners are not listening")

    def _sample_metrics(self) -> None:
        games = self.registry.games()
        for game in games:
            game.report_received()
        self.metrics.reader_lag.set(max((game.reader_lag() for game in games), default=0))

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for port in (self.port, self.websocket_port):
            if port is not None:
                await defer.maybeDeferred(port.stopListening)
        self.port = self.websocket_port = None
        games = self.registry.games()
        self.log.info("Shutting down: ending and saving {count} games", count=len(games))
        await self.registry.stop()
        await self.recovery.stop()
        await MultiService.stopService(self)  # error reports still in line are sent
        if self.http_port is not None:  # /metrics and /healthz served until now
            await defer.maybeDeferred(self.http_port.stopListening)
            self.http_port = None
        self.spool.stop()
        if self._database is not None:
            self._database.close()
        self.threadpool.stop()
        self.log.info("All games saved; stopped")


def make_service(config: Config, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    from replayserver.workers import worker_count
    from replayserver.workers.supervisor import WorkersService, assign_spool

    if worker_count(config.server.workers) > 1:
        return WorkersService(config, reactor)
    assign_spool(config.storage.spool, 1)  # games an earlier run with workers left
    return ReplayService(config, reactor)
