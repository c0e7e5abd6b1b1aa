"""Admission of writers: which game ids a writer may start (docs/lifecycle.md).

With ``admission.require_live_game`` (the default when a database is configured), a writer is
accepted only for a game that the lobby server launched recently: its game_stats row exists
(waiting up to ``admission.wait`` seconds for it, since the row is inserted at about the moment
the first replay bytes arrive), it has not ended more than END_TOLERANCE seconds ago, it started
within the forced end window, and its replay is not already available. If the database cannot be
asked, the writer is accepted (and that is logged): an outage must not cost a replay.

The registry asks once per game id, however many writers arrive together, and the lookups
in flight are bounded (``concurrency``) so that a crowd of writers for unknown ids cannot take
every database connection from the saves.
"""
from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

POLL_INTERVAL = 1.0
# A writer may start streaming a little after endTime (the score screen keeps streams open).
END_TOLERANCE = 120.0


@attrs.frozen
class GameRow:
    """What admission needs from a game_stats row (times in unix seconds, UTC)."""

    game_id: int
    start: int
    end: int | None
    replay_available: bool


class IGameRows(Interface):
    """Where game rows are looked up (FAF's database)."""

    def game_row(game_id: int) -> Deferred[GameRow | None]:
        """The game's row, or None if it has none; fails if the database cannot be asked."""


@attrs.frozen
class AdmissionResult:
    accepted: bool
    reason: str


ACCEPTED = AdmissionResult(True, "live game")
NOT_CHECKED = AdmissionResult(True, "admission not required")
DATABASE_UNAVAILABLE = AdmissionResult(True, "database unavailable, not checked")
UNKNOWN_GAME = AdmissionResult(False, "no game_stats row")
ENDED = AdmissionResult(False, "game ended")
TOO_OLD = AdmissionResult(False, "game started before the forced end window")
ALREADY_SAVED = AdmissionResult(False, "replay already available")


class IAdmission(Interface):
    """Decides whether writers may start a game id."""

    def check(game_id: int) -> Deferred[AdmissionResult]:
        """The decision; cancelling the Deferred stops the checking."""


@implementer(IAdmission)
class NoAdmission:
    """Accepts every writer (``admission.require_live_game: false``, or no database)."""

    def check(self, game_id: int) -> Deferred[AdmissionResult]:
        return succeed(NOT_CHECKED)


@implementer(IAdmission)
class Admission:
    """Accepts writers of live games only; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        rows: IGameRows,
        clock: IReactorTime,
        *,
        wait: float,
        forced_end: float,
        concurrency: int = 1,
        poll_interval: float = POLL_INTERVAL,
        end_tolerance: float = END_TOLERANCE,
    ) -> None:
        self._rows = rows
        self._clock = clock
        self._wait = wait
        self._forced_end = forced_end
        self._lookups = DeferredSemaphore(max(1, concurrency))
        self._poll_interval = poll_interval
        self._end_tolerance = end_tolerance

    def check(self, game_id: int) -> Deferred[AdmissionResult]:
        """Fires with the decision, at the latest about `wait` seconds from now. Cancelling the
        Deferred (its writers went away) stops the polling."""
        return _Poll(game_id, self._lookup, self.judge, self._clock,
                     deadline=self._clock.seconds() + self._wait,
                     interval=self._poll_interval).result

    def _lookup(self, game_id: int) -> Deferred[GameRow | None]:
        return self._lookups.run(self._rows.game_row, game_id)

    def judge(self, row: GameRow) -> AdmissionResult:
        """The decision for a game whose row exists."""
        now = self._clock.seconds()
        if row.replay_available:
            return ALREADY_SAVED
        if row.end is not None and now - row.end > self._end_tolerance:
            return ENDED
        if now - row.start > self._forced_end:
            return TOO_OLD
        return ACCEPTED


class _Poll:
    """One admission check: polls the game's row until it appears or the deadline passes."""

    log = Logger()

    def __init__(
        self, game_id: int, lookup: Callable[[int], Deferred[GameRow | None]],
        judge: Callable[[GameRow], AdmissionResult], clock: IReactorTime, *, deadline: float,
        interval: float,
    ) -> None:
        self._game_id = game_id
        self._lookup = lookup
        self._judge = judge
        self._clock = clock
        self._deadline = deadline
        self._interval = interval
        self._query: Deferred[GameRow | None] | None = None
        self._timer: IDelayedCall | None = None
        self.result: Deferred[AdmissionResult] = Deferred(self._cancel)
        self._poll()

    def _poll(self) -> None:
        self._timer = None
        self._query = self._lookup(self._game_id)
        self._query.addCallbacks(self._found, self._failed)

    def _found(self, row: GameRow | None) -> None:
        self._query = None
        if row is not None:
            self.result.callback(self._judge(row))
        elif self._clock.seconds() + self._interval > self._deadline:
            self.result.callback(UNKNOWN_GAME)
        else:
            self._timer = self._clock.callLater(self._interval, self._poll)

    def _failed(self, failure: Failure) -> None:
        self._query = None
        if failure.check(CancelledError):
            return
        self.log.error(
            "Game {game_id}: admission of its writers not checked, the database failed: {error}",
            game_id=self._game_id, error=failure.value,
        )
        self.result.callback(DATABASE_UNAVAILABLE)

    def _cancel(self, _: Deferred[AdmissionResult]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._query is not None:
            self._query.cancel()
