"""Crash recovery: games left in the spool by an earlier run are merged and saved at start.

Each spooled game is merged from its writers' whole streams (as the live merge would have
finished it), saved with ``ended_at`` = the last write to its spool files, and its spool is
removed only once the replay is in the vault. Games are recovered one at a time, so memory
holds one game's streams at once; the service accepts connections meanwhile.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from replayserver.game.registry import GameRegistry
from replayserver.merge.live import merge_streams
from replayserver.save.saver import FINAL, ReplaySaver
from replayserver.save.spool import Spool


class Recovery:
    """Saves what an earlier run left in the spool."""

    log = Logger()

    def __init__(
        self, spool: Spool, saver: ReplaySaver, registry: GameRegistry | None = None, *,
        quorum: int = 2, comparison_window: int = 4096,
    ) -> None:
        """``registry``: refuses writers for the ids being recovered until they are saved."""
        self.spool = spool
        self.saver = saver
        self.registry = registry
        self.quorum = quorum
        self.comparison_window = comparison_window
        self._stopping = False
        self._done: defer.Deferred | None = None

    def start(self) -> defer.Deferred:
        """Begin recovering; the Deferred fires with the saved games' ids when done."""
        self._done = defer.ensureDeferred(self._recover())
        return self._done

    def stop(self) -> defer.Deferred:
        """Start no further game; fires once the game being saved now (if any) is saved."""
        self._stopping = True
        if self._done is None:
            return defer.succeed(None)
        done = defer.Deferred()

        def finished(result: object) -> object:
            done.callback(None)
            return result

        self._done.addBoth(finished)
        return done

    async def _recover(self) -> list[int]:
        games = self.spool.pending()
        if games:
            self.log.info("Recovering {count} games left in the spool: {ids}",
                          count=len(games), ids=[game.game_id for game in games])
        saved = []
        for game in games:
            if self._stopping:
                self.log.info("Recovery interrupted by shutdown; the spool keeps the rest")
                break
            if await self.saver.is_saved(game.game_id):
                self.log.info("Spooled game {game_id} is already in the vault; dropping its "
                              "spool", game_id=game.game_id)
                await game.remove()
                continue
            canonical = merge_streams(
                game.streams, quorum=self.quorum, comparison_window=self.comparison_window
            )
            try:
                result = await self.saver.save(
                    game.game_id, canonical, game.started_at, game.last_modified, game
                )
            except FINAL:
                continue  # logged by the saver
            except Exception:
                self.log.failure("Recovering game {game_id} failed; its spool is kept",
                                 game_id=game.game_id)
                continue
            self.log.info("Recovered game {game_id} from {writers} spooled streams: saved to "
                          "{path}, {ticks} ticks, {size} bytes", game_id=game.game_id,
                          writers=len(game.paths), path=result.path, ticks=result.ticks,
                          size=result.size)
            saved.append(game.game_id)
        return saved
