"""Crash recovery: games left in the spool by an earlier run are merged and saved at start.

See docs/saving.md (crash recovery). At start, before the service serves any connection, the
ids of the spooled games are held in the game registry: their writers are refused until their
game is saved, so a stray connection cannot create a game that races the recovered one. Then,
in the background, one game after the other, oldest first:

* a game already in the vault (the crash came after the vault write) gets its index update
  (with a database) and then its spool is removed (`ReplaySaver.record_saved`);
* otherwise its streams are read a chunk of each at a time in the spool's thread and fed to
  the live merge (no delay; the merge runs after every round, so compared bytes are released),
  and the merged replay is saved like a live game's, with ``ended_at`` = the last write to its
  spool files; its spool is removed once the replay is in the vault and indexed.

A game whose files cannot be read fails alone: it is logged (game id and file) and tried again
later with backoff while the other games go on. A shutdown stops the recovery between steps;
the spool keeps what is left for the next start.
"""
from __future__ import annotations

import heapq
from contextlib import suppress

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import Logger

from replayserver.game.interfaces import NothingToSave, SaveAbandoned
from replayserver.game.registry import GameRegistry
from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.delay import Ticker
from replayserver.merge.live import LiveReplay
from replayserver.replay.errors import HeaderError
from replayserver.save.saver import ReplaySaver
from replayserver.save.spool import Spool
from replayserver.save.spooled import SpooledGame, SpooledStreams, UnreadableSpool
from replayserver.save.vault import AlreadyInVault

#: Bytes read from each stream of a game per round.
CHUNK_SIZE = 1 << 16


class _Interrupted(Exception):
    """The service is stopping: the game being recovered stays in the spool."""


class Recovery:
    """Saves what an earlier run left in the spool."""

    log = Logger()

    def __init__(
        self, spool: Spool, saver: ReplaySaver, registry: GameRegistry | None = None, *,
        quorum: int = 2, comparison_window: int = 4096, first_retry: float = 1.0,
        max_retry: float = 300.0, chunk_size: int = CHUNK_SIZE,
    ) -> None:
        """``registry``: refuses writers for the ids being recovered until they are saved.
        A game that cannot be read is tried again after ``first_retry`` seconds, then twice as
        long each time up to ``max_retry`` (on the saver's clock). ``chunk_size``: bytes read
        from each stream per round."""
        self.spool = spool
        self.saver = saver
        self.registry = registry
        self.quorum = quorum
        self.comparison_window = comparison_window
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.chunk_size = chunk_size
        self._clock = saver.clock
        self._held: set[int] = set()
        self._stopping = False
        self._sleep: tuple[IDelayedCall, defer.Deferred[None]] | None = None
        self._done: defer.Deferred[list[int]] | None = None

    def start(self) -> defer.Deferred[list[int]]:
        """Hold the spooled ids (now), then recover in the background; the Deferred fires
        with the ids of the games saved to the vault."""
        try:
            self._held = self.spool.spooled_ids()
        except OSError as error:
            return defer.fail(error)
        if self.registry is not None:
            self.registry.hold(self._held)
        self._done = defer.ensureDeferred(self._recover())
        return self._done

    def stop(self) -> defer.Deferred[None]:
        """Start no further step; fires once the step under way (if any) is over."""
        self._stopping = True
        if self._sleep is not None:
            call, sleeping = self._sleep
            call.cancel()
            sleeping.callback(None)
        if self._done is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()

        def finished(result: object) -> object:
            done.callback(None)
            return result

        self._done.addBoth(finished)
        return done

    def _release(self, game_id: int) -> None:
        self._held.discard(game_id)
        if self.registry is not None:
            self.registry.release(game_id)

    async def _recover(self) -> list[int]:
        games = await self.spool.pending()
        for game_id in self._held - {game.game_id for game in games}:
            self._release(game_id)  # its directories held no stream
        if games:
            self.log.info("Recovering {count} games left in the spool: {ids}",
                          count=len(games), ids=[game.game_id for game in games])
        saved = []
        # (when, order, game, the wait after its next failure), oldest game first
        queue = [(0.0, order, game, self.first_retry) for order, game in enumerate(games)]
        while queue and not self._stopping:
            when, order, game, delay = heapq.heappop(queue)
            await self._wait_until(when)
            if self._stopping:
                heapq.heappush(queue, (when, order, game, delay))
                break
            try:
                if await self._recover_game(game):
                    saved.append(game.game_id)
            except (_Interrupted, SaveAbandoned):
                heapq.heappush(queue, (when, order, game, delay))
                break
            except UnreadableSpool as error:
                self.log.error(
                    "Recovering game {game_id} failed: cannot read {path} ({reason}); trying it"
                    " again in {delay} s, the other games go on", game_id=game.game_id,
                    path=error.path, reason=error.reason, delay=delay)
            except Exception as error:
                text = ("Recovering game {game_id} failed ({error}); trying it again in {delay}"
                        " s, the other games go on")
                if delay == self.first_retry:  # its first failure: with the traceback
                    self.log.failure(text, game_id=game.game_id, error=error, delay=delay)
                else:
                    self.log.error(text, game_id=game.game_id, error=error, delay=delay)
            else:
                self._release(game.game_id)
                continue
            heapq.heappush(queue, (self._clock.seconds() + delay, order, game,
                                   min(delay * 2, self.max_retry)))
        if queue:
            self.log.info("Recovery interrupted by shutdown; the spool keeps {count} games: {ids}",
                          count=len(queue), ids=sorted(game.game_id for _, _, game, _ in queue))
        return saved

    async def _wait_until(self, when: float) -> None:
        """Sleep until the clock reads ``when`` (or `stop` is called)."""
        delay = when - self._clock.seconds()
        if delay <= 0:
            return
        sleeping: defer.Deferred[None] = defer.Deferred()
        self._sleep = (self._clock.callLater(delay, sleeping.callback, None), sleeping)
        try:
            await sleeping
        finally:
            self._sleep = None

    async def _recover_game(self, game: SpooledGame) -> bool:
        """Recover one game; True if its replay was written to the vault now."""
        game_id = game.game_id
        if await self.saver.is_saved(game_id):
            ticks = await self.saver.record_saved(game_id, game)
            self.log.info("Spooled game {game_id} is already in the vault{indexed}; its spool is"
                          " removed", game_id=game_id,
                          indexed="" if ticks is None else f" (indexed with {ticks} ticks)")
            return False
        streams = await game.scan()
        canonical = await self._merge(game, streams)
        try:
            result = await self.saver.save(
                game_id, canonical, streams.started_at, streams.last_modified, game)
        except NothingToSave:
            self.log.info("Spooled game {game_id} has no complete replay header: nothing to"
                          " save; its spool is removed", game_id=game_id)
            return False
        except AlreadyInVault:
            return False  # logged by the saver
        self.log.info("Recovered game {game_id} from {writers} spooled streams: saved to {path},"
                      " {ticks} ticks, {size} bytes", game_id=game_id, writers=len(streams.paths),
                      path=result.path, ticks=result.ticks, size=result.size)
        return True

    async def _merge(self, game: SpooledGame, streams: SpooledStreams) -> CanonicalReplay:
        """Merge the game's streams as the live merge would have finished them."""
        clock = Clock()  # one merge step per round of reads
        live = LiveReplay(Ticker(clock, 1), delay=0, quorum=self.quorum,
                          comparison_window=self.comparison_window, game_id=game.game_id)
        writers = [live.add_writer(name) for name in streams.names]
        reader = game.reader(streams)
        try:
            while reading := [index for index, writer in enumerate(writers) if not writer.ended]:
                if self._stopping:
                    raise _Interrupted()
                chunks = await reader.read(reading, self.chunk_size)
                for index, chunk in zip(reading, chunks):
                    if not chunk:
                        writers[index].end(clean=True)
                        continue
                    with suppress(HeaderError):  # the stream ends there and takes no part
                        writers[index].feed(chunk)
                clock.advance(1)
        finally:
            await reader.close()
        live.finish()
        return live.canonical
