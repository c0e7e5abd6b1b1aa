"""Admission of writers ("disapprove replay when lobby is not active").

With `admission.require_live_game`, a writer is accepted only for a game that the lobby server
launched recently: its game_stats row exists (waiting up to `admission.wait` seconds for it,
since the row is inserted at about the moment the first replay bytes arrive), it has not ended
more than END_TOLERANCE seconds ago, it started within the forced end window, and its replay is
not already available. If the database cannot be asked, the writer is accepted (and that is
logged): an outage must not cost a replay. Readers are never checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from replayserver.save.database import GameState

POLL_INTERVAL = 1.0
# A writer may start streaming a little after endTime (the score screen keeps streams open).
END_TOLERANCE = 120.0


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


class NoAdmission:
    """Accepts every writer (`admission.require_live_game: false`)."""

    def check(self, game_id: int) -> Deferred[AdmissionResult]:
        return succeed(NOT_CHECKED)


class Admission:
    """Accepts writers of live games only; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        lookup: Callable[[int], Deferred[GameState | None]],
        clock: IReactorTime,
        *,
        wait: float,
        forced_end: float,
        poll_interval: float = POLL_INTERVAL,
        end_tolerance: float = END_TOLERANCE,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._wait = wait
        self._forced_end = forced_end
        self._poll_interval = poll_interval
        self._end_tolerance = end_tolerance

    def check(self, game_id: int) -> Deferred[AdmissionResult]:
        """Fires with the decision, at the latest about `wait` seconds from now. Cancelling the
        Deferred (the writer went away) stops the polling."""
        return _Check(self, game_id).result

    def judge(self, state: GameState) -> AdmissionResult:
        """The decision for a game whose row exists."""
        now = self._clock.seconds()
        if state.replay_available:
            return ALREADY_SAVED
        if state.end is not None and now - state.end > self._end_tolerance:
            return ENDED
        if now - state.start > self._forced_end:
            return TOO_OLD
        return ACCEPTED


class _Check:
    """One admission check: polls the game's row until it appears or the wait is over."""

    def __init__(self, admission: Admission, game_id: int) -> None:
        self._admission = admission
        self._game_id = game_id
        self._deadline = admission._clock.seconds() + admission._wait
        self._query: Deferred | None = None
        self._timer: IDelayedCall | None = None
        self.result: Deferred[AdmissionResult] = Deferred(self._cancel)
        self._poll()

    def _poll(self) -> None:
        self._timer = None
        self._query = self._admission._lookup(self._game_id)
        self._query.addCallbacks(self._found, self._failed)

    def _found(self, state: GameState | None) -> None:
        self._query = None
        admission = self._admission
        if state is not None:
            self.result.callback(admission.judge(state))
        elif admission._clock.seconds() + admission._poll_interval > self._deadline:
            self.result.callback(UNKNOWN_GAME)
        else:
            self._timer = admission._clock.callLater(admission._poll_interval, self._poll)

    def _failed(self, failure: Failure) -> None:
        self._query = None
        if failure.check(CancelledError):
            return
        self._admission.log.warn(
            "Admission of a writer for game {game_id} not checked: {error}",
            game_id=self._game_id, error=failure.value,
        )
        self.result.callback(DATABASE_UNAVAILABLE)

    def _cancel(self, _: Deferred) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._query is not None:
            self._query.cancel()
