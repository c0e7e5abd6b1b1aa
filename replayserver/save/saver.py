"""The save pipeline: metadata -> vault file -> index (database) -> spool removal.

See docs/saving.md (the save steps, and retries). Every step that fails is retried with
exponential backoff, as long as the service runs: a replay is never given up because a disk or
a database is down for a while, and its writers' spool files are kept until the file is in the
vault and indexed. Each failed attempt is one error line naming the game, the step and the
cause; the first of a save carries the traceback (and so is reported to Bugsnag).

Final failures: a game without any complete replay header (nothing to save), a game id already
in the vault, and a save the stopping service gave up (`abandon`, at
``server.shutdown_timeout``): its spool is kept and the next start recovers it.
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.game.interfaces import (
    IGameSpool,
    ISaver,
    NothingToSave,
    SaveAbandoned,
    SavedReplay,
)
from replayserver.merge.canonical import CanonicalReplay
from replayserver.metrics import Metrics
from replayserver.replay.body import BodyScanner
from replayserver.replay.container import open_fafreplay
from replayserver.replay.errors import ReplayFormatError
from replayserver.replay.header import HeaderParser, parse_header
from replayserver.save.interfaces import IMetadataSource, IReplayIndex, NullIndex
from replayserver.save.vault import AlreadyInVault, Vault

T = TypeVar("T")


FINAL = (NothingToSave, AlreadyInVault, SaveAbandoned)


@attrs.frozen
class Ticks:
    """The game ticks of a body; ``error`` says why counting stopped early, if it did."""

    count: int
    error: ReplayFormatError | None = None


def scan_ticks(chunks: Iterable[bytes]) -> Ticks:
    """Game ticks of body ``chunks``, up to their last whole frame (or their first bad one)."""
    scanner = BodyScanner()
    try:
        for chunk in chunks:
            scanner.feed(chunk)
    except ReplayFormatError as error:
        return Ticks(scanner.ticks, error)
    return Ticks(scanner.ticks)


def stored_ticks(path: str) -> Ticks:
    """Game ticks of the replay stored at ``path``, decompressed as it is read (blocking)."""
    with open(path, "rb") as file:
        try:
            replay = open_fafreplay(file)
        except ReplayFormatError as error:
            return Ticks(0, error)
        return scan_ticks(_body(replay.chunks))


def _body(scfa: Iterable[bytes]) -> Iterator[bytes]:
    """The body chunks of SCFA ``scfa`` chunks (raises HeaderError for a bad header)."""
    parser = HeaderParser()
    chunks = iter(scfa)
    for chunk in chunks:
        if parser.feed(chunk) is not None:
            yield parser.excess or b""
            yield from chunks
            return
    parser.end()


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
        self._failed: set[int] = set()  # saves whose first failure was logged
        #: One call per save that waits (for an attempt, or before the next one): `abandon`
        #: calls them, which fails the save with SaveAbandoned.
        self._aborts: set[Callable[[], None]] = set()
        self._abandoned = False

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

        The caller logs the outcome (one line per game end); the saver logs failed attempts,
        and a save given up at shutdown (`SaveAbandoned`).
        """
        return defer.ensureDeferred(
            self._final(game_id, self._save(game_id, replay, launched_at, ended_at, spool)))

    def record_saved(self, game_id: int, spool: IGameSpool) -> defer.Deferred[int | None]:
        """The replay of ``game_id`` is in the vault already, but a crash may have come before
        its index update: with an index (a database), count the stored file's ticks and record
        them; then remove ``spool``. Fires with the ticks recorded (None without an index)."""
        return defer.ensureDeferred(self._final(game_id, self._record_saved(game_id, spool)))

    def abandon(self) -> None:
        """Give up every save that is still waiting (the service stops): each fails with
        `SaveAbandoned` and keeps its spool; so does every save started from now on."""
        self._abandoned = True
        aborts, self._aborts = self._aborts, set()
        for abort in aborts:
            abort()

    async def _final(self, game_id: int, saving: Coroutine[object, object, T]) -> T:
        """``saving``'s outcome (its caller logs it: the game's end line, or recovery's)."""
        try:
            return await saving
        finally:
            self._failed.discard(game_id)

    async def _save(
        self, game_id: int, canonical: CanonicalReplay, started_at: float, ended_at: float,
        spool: IGameSpool,
    ) -> SavedReplay:
        if not canonical.has_header:
            await self._remove_spool(game_id, spool)
            raise NothingToSave(game_id)
        if await self.is_saved(game_id):
            self.log.warn("Game {game_id} is already in the vault; not saved again",
                          game_id=game_id)
            await self._remove_spool(game_id, spool)
            raise AlreadyInVault(game_id, self.vault.path(game_id))
        header_raw, body = canonical.header_raw, canonical.body()
        assert header_raw is not None
        # Decoded off the event loop (about 1 ms for a big lobby): hundreds of games may end
        # in the same second.
        header = await self.vault.run(parse_header, header_raw)
        metadata = await self._retry(
            game_id, "metadata",
            lambda: self.metadata.metadata(game_id, header, started_at, ended_at),
        )
        ticks = await self._count(game_id, lambda: self.vault.run(scan_ticks, [body]))
        try:
            path: str = await self._retry(
                game_id, "vault write",
                lambda: self.vault.write(game_id, metadata, [header_raw, body]))
        except AlreadyInVault:
            await self._remove_spool(game_id, spool)
            raise
        self._saved.add(game_id)
        self.metrics.saved_replay_files.inc()
        await self._retry(game_id, "index update", lambda: self.index.mark_saved(game_id, ticks))
        await self._remove_spool(game_id, spool)
        return SavedReplay(path=path, ticks=ticks, size=len(header_raw) + len(body))

    async def _record_saved(self, game_id: int, spool: IGameSpool) -> int | None:
        ticks = None
        if not isinstance(self.index, NullIndex):
            path = self.vault.path(game_id)
            ticks = await self._count(game_id, lambda: self.vault.run(stored_ticks, path))
            counted = ticks
            await self._retry(game_id, "index update",
                              lambda: self.index.mark_saved(game_id, counted))
        self._saved.add(game_id)
        await self._remove_spool(game_id, spool)
        return ticks

    async def _count(self, game_id: int, count: Callable[[], defer.Deferred[Ticks]]) -> int:
        ticks = await self._retry(game_id, "tick count", count)
        if ticks.error is not None:
            self.log.warn("Game {game_id}: counting ticks stopped at {ticks}: {error}",
                          game_id=game_id, ticks=ticks.count, error=ticks.error)
        return ticks.count

    async def _retry(self, game_id: int, step: str,
                     attempt: Callable[[], defer.Deferred[T]]) -> T:
        delay = self.first_retry
        try:
            while True:
                try:
                    return await self._unless_abandoned(game_id, attempt())
                except FINAL:
                    raise
                except Exception as error:
                    self._failed_attempt(game_id, step, error, delay)
                await self._unless_abandoned(game_id, deferLater(self.clock, delay))
                delay = min(delay * 2, self.max_retry)
        finally:
            self.pending.pop(game_id, None)
            self.metrics.pending_saves.set(len(self.pending))

    def _failed_attempt(self, game_id: int, step: str, error: Exception, delay: float) -> None:
        """Log one failed attempt (call it in the ``except`` block: the first of a save is
        logged with its traceback) and count it."""
        self.pending[game_id] = step
        self.metrics.pending_saves.set(len(self.pending))
        self.metrics.save_retries.labels(step=step).inc()
        text = ("Saving game {game_id} failed at its {step}: {cause}; retrying in {delay} s"
                " ({count} saves pending)")
        cause = f"{type(error).__name__}: {error}"
        if game_id in self._failed:
            self.log.error(text, game_id=game_id, step=step, cause=cause, delay=delay,
                           count=len(self.pending))
        else:
            self._failed.add(game_id)
            self.log.failure(text, level=LogLevel.error, game_id=game_id, step=step, cause=cause,
                             delay=delay, count=len(self.pending))

    def _unless_abandoned(self, game_id: int, work: defer.Deferred[T]) -> defer.Deferred[T]:
        """``work``'s result, unless `abandon` is called first: then `SaveAbandoned`, and
        ``work`` is cancelled (a thread's work goes on, its result is dropped)."""
        if self._abandoned:
            work.addErrback(lambda _: None)
            work.cancel()
            return defer.fail(SaveAbandoned(game_id))
        waiter: defer.Deferred[T] = defer.Deferred()

        def abort() -> None:
            waiter.errback(Failure(SaveAbandoned(game_id)))
            work.cancel()

        def settle(result: T | Failure) -> None:
            if abort not in self._aborts:
                return  # abandoned: the save has moved on
            self._aborts.discard(abort)
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

        self._aborts.add(abort)
        work.addBoth(settle)
        return waiter

    async def _remove_spool(self, game_id: int, spool: IGameSpool) -> None:
        try:
            await spool.remove()
        except OSError as e:
            self.log.error("Cannot remove the spool of game {game_id}: {e}", game_id=game_id, e=e)
        except Exception:
            self.log.failure("Cannot remove the spool of game {game_id}", game_id=game_id)
