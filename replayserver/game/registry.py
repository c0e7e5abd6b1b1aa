"""The running games by id: a game is created by its first admitted writer, forgotten when done.

A writer joins through `GameRegistry.join_writer`. A running game takes it at once. For an id
that is not running, the registry first checks, once for all the writers of that id that
arrive meanwhile, that the id is not saved already (FAF's previous servers then overwrote a
saved replay's availability), that it is not being recovered from the spool of an earlier run
(a stray writer must not race the recovery), and that admission accepts it; then it creates the
game. A reader that arrives meanwhile waits for that outcome (`find`). See docs/lifecycle.md.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.config import LimitsSection, ReplaySection
from replayserver.game.admission import AdmissionResult, IAdmission, NoAdmission
from replayserver.game.game import Game
from replayserver.game.interfaces import ISaver, ISpool
from replayserver.merge.delay import Ticker
from replayserver.metrics import Metrics


class WriterRefused(Exception):
    """No writer is accepted for this game id; the message says why, ``reason`` names it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Joining:
    """The checks for one game id that is not running yet, shared by its waiting writers."""

    def __init__(self, checks: defer.Deferred[Game]) -> None:
        self.checks = checks
        self.waiters: list[defer.Deferred[Game]] = []  # writers
        self.readers: list[defer.Deferred[Game | None]] = []


class GameRegistry:
    """Owns the running games (and the ended ones until they are saved and their readers done)."""

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        replay: ReplaySection,
        limits: LimitsSection,
        saver: ISaver,
        spool: ISpool,
        metrics: Metrics,
        admission: IAdmission | None = None,
    ) -> None:
        self._clock = clock
        self._replay = replay
        self._limits = limits
        self._saver = saver
        self._spool = spool
        self._metrics = metrics
        self._admission = admission if admission is not None else NoAdmission()
        self._games: dict[int, Game] = {}
        self._joining: dict[int, _Joining] = {}
        self._ticker = Ticker(clock, replay.sample_interval)  # one for every game
        self._held: set[int] = set()
        self._stopping = False

    def get(self, game_id: int) -> Game | None:
        return self._games.get(game_id)

    def games(self) -> list[Game]:
        return list(self._games.values())

    def find(self, game_id: int) -> defer.Deferred[Game | None]:
        """The game of a new reader: the running one, or the one its first writers are
        creating (once the checks are done; None if they fail), or None."""
        game = self._games.get(game_id)
        joining = self._joining.get(game_id)
        if game is not None or joining is None:
            return defer.succeed(game)
        reader: defer.Deferred[Game | None] = defer.Deferred(
            lambda reader: self._withdraw_reader(joining, reader))
        joining.readers.append(reader)
        return reader

    def _withdraw_reader(self, joining: _Joining, reader: defer.Deferred[Game | None]) -> None:
        if reader in joining.readers:
            joining.readers.remove(reader)

    def hold(self, game_ids: set[int]) -> None:
        """Refuse writers for these ids until `release` (games being recovered)."""
        self._held |= game_ids

    def release(self, game_id: int) -> None:
        self._held.discard(game_id)

    def join_writer(self, game_id: int) -> defer.Deferred[Game]:
        """The running game a new writer joins, created once the checks pass.

        Fails with `WriterRefused`. Cancelling the Deferred (the writer left) withdraws this
        writer only."""
        game = self._games.get(game_id)
        if game is not None:
            if not game.running:
                return defer.fail(WriterRefused(f"game {game_id} has ended", "game ended"))
            return defer.succeed(game)
        refusal = self._refusal(game_id)
        if refusal is not None:
            return defer.fail(refusal)
        waiter: defer.Deferred[Game] = defer.Deferred(
            lambda waiter: self._withdraw(game_id, waiter))
        joining = self._joining.get(game_id)
        if joining is not None:
            joining.waiters.append(waiter)
            return waiter
        joining = self._joining[game_id] = _Joining(self._check(game_id))
        joining.waiters.append(waiter)
        joining.checks.addBoth(self._checked, game_id)  # may fire at once
        return waiter

    def _refusal(self, game_id: int) -> WriterRefused | None:
        if self._stopping:
            return WriterRefused("the server is shutting down", "shutting down")
        if game_id in self._held:
            return WriterRefused(f"game {game_id} is being recovered from the spool",
                                 "recovering")
        return None

    def _check(self, game_id: int) -> defer.Deferred[Game]:
        return defer.ensureDeferred(self._admit(game_id))

    async def _admit(self, game_id: int) -> Game:
        if await self._saver.is_saved(game_id):
            raise WriterRefused(f"game {game_id} is already saved", "already saved")
        decision: AdmissionResult = await self._admission.check(game_id)
        if not decision.accepted:
            raise WriterRefused(f"game {game_id}: {decision.reason}", "admission")
        refusal = self._refusal(game_id)  # things may have changed while we waited
        if refusal is not None:
            raise refusal
        game = self._games.get(game_id)
        if game is None:
            game = self._create(game_id)
        return game

    def _checked(self, result: Game | Failure, game_id: int) -> None:
        joining = self._joining.pop(game_id)
        for waiter in joining.waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        for reader in joining.readers:
            reader.callback(None if isinstance(result, Failure) else result)

    def _withdraw(self, game_id: int, waiter: defer.Deferred[Game]) -> None:
        joining = self._joining.get(game_id)
        if joining is None or waiter not in joining.waiters:
            return
        joining.waiters.remove(waiter)
        if not joining.waiters:  # nobody waits any more: stop checking
            joining.checks.cancel()

    def _create(self, game_id: int) -> Game:
        game = Game(
            game_id,
            clock=self._clock,
            replay=self._replay,
            limits=self._limits,
            saver=self._saver,
            spool=self._spool.open_game(game_id),
            metrics=self._metrics,
            on_done=self._forget,
            ticker=self._ticker,
        )
        self._games[game_id] = game
        self._log.info("Game {game_id} created", game_id=game_id)
        return game

    def stop(self) -> defer.Deferred[None]:
        """End every running game now; fires (with None) once every game is saved or failed."""
        self._stopping = True
        for joining in list(self._joining.values()):
            joining.checks.cancel()
        games = self.games()
        for game in games:
            game.end_now()
        done = defer.DeferredList([game.saved for game in games], consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _forget(self, game: Game) -> None:
        if self._games.get(game.game_id) is game:
            del self._games[game.game_id]
