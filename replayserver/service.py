"""The whole server as one Twisted MultiService, built from a checked Config.

Start: the vault's thread pool, the spool's flush timer, crash recovery (in the background),
then the listeners. Stop (SIGTERM/SIGINT through twistd): stop listening, end every running
game and wait until all of them are saved, then stop the spool and the thread pool. The
Deferred returned by stopService makes twistd wait for all of it.
"""
from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replayserver.accept.protocol import ConnectionFactory
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


class ReplayService(MultiService):
    """The replay server; other parts (HTTP, WebSocket) are added as child services."""

    log = Logger()

    def __init__(self, config: Config, reactor) -> None:
        super().__init__()
        self.config = config
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
            metrics=self.metrics,
        )
        self.recovery = Recovery(self.spool, self.saver, quorum=replay.quorum,
                                 comparison_window=replay.comparison_window)
        factory = ConnectionFactory(
            self.registry, clock=reactor, header_timeout=config.server.header_timeout,
            metrics=self.metrics, admission=self._admission(),
        )
        self.factory = factory
        self.endpoint = endpoints.serverFromString(reactor, config.server.listen)
        self.port: IListeningPort | None = None

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
        self.vault.remove_leftovers()
        self.spool.start()
        self.recovery.start().addErrback(
            lambda failure: self.log.failure("Crash recovery failed", failure)
        )
        super().startService()
        self._listen()
        self.log.info("Replay server listening on {address}; vault {vault}, spool {spool}",
                      address=self.port.getHost(), vault=self.vault.directory,
                      spool=self.spool.directory)

    def _listen(self) -> None:
        """Listen now; a failure (port in use...) is raised here and stops the start."""
        listening = self.endpoint.listen(self.factory)
        outcome: list = []
        listening.addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.config.server.listen} did not start listening at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        games = self.registry.games()
        self.log.info("Shutting down: ending and saving {count} games", count=len(games))
        await self.registry.stop()
        await self.recovery.stop()
        await MultiService.stopService(self)
        self.spool.stop()
        if self._database is not None:
            self._database.close()
        self.threadpool.stop()
        self.log.info("All games saved; stopped")


def make_service(config: Config, reactor=None) -> ReplayService:
    if reactor is None:
        from twisted.internet import reactor
    return ReplayService(config, reactor)
