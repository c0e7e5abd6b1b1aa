"""The running games by id: a game is created by its first writer and forgotten when done."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayserver.game.game import Game

if TYPE_CHECKING:
    from replayserver.metrics import Metrics
    from replayserver.save.saver import ReplaySaver
    from replayserver.save.spool import Spool


class WriterRefused(Exception):
    """No writer is accepted for this game id; the message says why."""


class GameRegistry:
    """Owns the running games (and the ended ones until they are saved and their readers done)."""

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        replay: Any,
        saver: ReplaySaver,
        spool: Spool,
        metrics: Metrics,
        limits: Any = None,
    ) -> None:
        """``limits``: the ``limits`` configuration section (defaults if None)."""
        self._clock = clock
        self._limits = limits
        self._replay = replay
        self._saver = saver
        self._spool = spool
        self._metrics = metrics
        self._games: dict[int, Game] = {}
        self._stopping = False

    def get(self, game_id: int) -> Game | None:
        return self._games.get(game_id)

    def games(self) -> list[Game]:
        return list(self._games.values())

    def game_for_writer(self, game_id: int) -> Game:
        """The running game a new writer joins, created if needed; raises `WriterRefused`."""
        game = self._games.get(game_id)
        if game is not None:
            if not game.running:
                raise WriterRefused(f"game {game_id} has ended")
            return game
        if self._stopping:
            raise WriterRefused("the server is shutting down")
        if self._saver.is_saved(game_id):
            raise WriterRefused(f"game {game_id} is already saved")
        game = Game(
            game_id,
            clock=self._clock,
            replay=self._replay,
            saver=self._saver,
            spool=self._spool,
            metrics=self._metrics,
            on_done=self._forget,
            limits=self._limits,
        )
        self._games[game_id] = game
        self._log.info("Game {game_id} created", game_id=game_id)
        return game

    def stop(self) -> defer.Deferred:
        """End every running game now; fires (with None) once every game is saved or failed."""
        self._stopping = True
        games = self.games()
        for game in games:
            game.end_now()
        saves = [game.saved for game in games]
        done = defer.DeferredList(saves, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _forget(self, game: Game) -> None:
        if self._games.get(game.game_id) is game:
            del self._games[game.game_id]
