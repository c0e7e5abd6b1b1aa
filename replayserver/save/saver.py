"""The save pipeline: metadata -> vault file -> index (database) -> spool removal.

Every step that fails is retried with exponential backoff, forever: a replay is never given
up because a disk or a database is down for a while, and its writers' spool files are kept
until the file is in the vault. Only two outcomes are final failures: a game without any
complete replay header (nothing to save) and a game id already in the vault.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from replayserver.game.interfaces import IGameSpool, ISaver, NothingToSave, SavedReplay
from replayserver.merge.canonical import CanonicalReplay
from replayserver.metrics import Metrics
from replayserver.replay.body import BodyScanner
from replayserver.replay.errors import BodyError
from replayserver.save.interfaces import IMetadataSource, IReplayIndex
from replayserver.save.vault import AlreadyInVault, Vault

T = TypeVar("T")

FINAL = (NothingToSave, AlreadyInVault)


def count_ticks(body: bytes, game_id: int | None = None) -> int:
    """Game ticks of a merged body, up to its last whole frame (or its first bad one)."""
    scanner = BodyScanner()
    try:
        scanner.feed(body)
    except BodyError as e:
        ReplaySaver.log.warn("Game {game_id}: counting ticks stopped at a bad frame: {e}",
                             game_id=game_id, e=e)
    return scanner.ticks


@implementer(ISaver)
class ReplaySaver:
    """Saves finished games; one instance per service."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        vault: Vault,
        metadata: IMetadataSource,
        index: IReplayIndex,
        metrics: Metrics,
        first_retry: float = 1.0,
        max_retry: float = 300.0,
    ) -> None:
        self.clock = clock
        self.vault = vault
        self.metadata = metadata
        self.index = index
        self.metrics = metrics
        self.first_retry = first_retry
        self.max_retry = max_retry
        #: game id -> the step being retried, for every save that is waiting to retry
        self.pending: dict[int, str] = {}
        self._saved: set[int] = set()

    def is_saved(self, game_id: int) -> defer.Deferred[bool]:
        """Whether the game's replay is in the vault (or was saved by this process)."""
        if game_id in self._saved:
            return defer.succeed(True)
        return self.vault.run(self.vault.contains, game_id)

    def save(
        self,
        game_id: int,
        replay: CanonicalReplay,
        launched_at: float,
        ended_at: float,
        spool: IGameSpool,
    ) -> defer.Deferred[SavedReplay]:
        """Save a finished game's replay; fires with a `SavedReplay`. ``spool`` (the game's
        own spool files) is removed once the replay is in the vault and indexed.

        The caller logs the outcome (one line per game end); the saver logs retries.
        """
        return defer.ensureDeferred(self._save(game_id, replay, launched_at, ended_at, spool))

    async def _save(
        self, game_id: int, canonical: CanonicalReplay, started_at: float, ended_at: float,
        spool: IGameSpool,
    ) -> SavedReplay:
        if canonical.header_raw is None:
            await self._remove_spool(game_id, spool)
            raise NothingToSave(game_id)
        if await self.is_saved(game_id):
            self.log.warn("Game {game_id} is already in the vault; not saved again",
                          game_id=game_id)
            await self._remove_spool(game_id, spool)
            raise AlreadyInVault(game_id, self.vault.path(game_id))
        header_raw, body = canonical.header_raw, canonical.body()
        metadata = await self._retry(
            game_id, "metadata",
            lambda: self.metadata.metadata(game_id, canonical.header, started_at, ended_at),
        )
        ticks = await self._retry(
            game_id, "tick count", lambda: self.vault.run(count_ticks, body, game_id))
        try:
            path = await self._retry(
                game_id, "vault write", lambda: self.vault.write(game_id, metadata, [header_raw, body])
            )
        except AlreadyInVault:
            await self._remove_spool(game_id, spool)
            raise
        self._saved.add(game_id)
        self.metrics.saved_replay_files.inc()
        await self._retry(game_id, "index update", lambda: self.index.mark_saved(game_id, ticks))
        await self._remove_spool(game_id, spool)
        return SavedReplay(path=path, ticks=ticks, size=len(header_raw) + len(body))

    async def _retry(self, game_id: int, step: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.first_retry
        try:
            while True:
                try:
                    return await attempt()
                except FINAL:
                    raise
                except Exception as e:
                    first = game_id not in self.pending
                    self.pending[game_id] = step
                    self.metrics.pending_saves.set(len(self.pending))
                    self.metrics.save_retries.labels(step=step).inc()
                    if first:  # an error, with its traceback, so that it is reported
                        self.log.failure(
                            "Saving game {game_id} failed at its {step}; retrying", game_id=game_id,
                            step=step, level=LogLevel.error,
                        )
                    self.log.warn(
                        "Saving game {game_id} is pending: {step} failed ({error!r}); retrying "
                        "in {delay} s ({count} saves pending)",
                        game_id=game_id, step=step, error=e, delay=delay, count=len(self.pending),
                    )
                await deferLater(self.clock, delay)
                delay = min(delay * 2, self.max_retry)
        finally:
            self.pending.pop(game_id, None)
            self.metrics.pending_saves.set(len(self.pending))

    async def _remove_spool(self, game_id: int, spool: IGameSpool) -> None:
        try:
            await spool.remove()
        except OSError as e:
            self.log.error("Cannot remove the spool of game {game_id}: {e}", game_id=game_id, e=e)
