"""Admission rules with a Clock and a scripted game_stats lookup."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayserver.game.admission import (
    ALREADY_SAVED,
    DATABASE_UNAVAILABLE,
    END_TOLERANCE,
    ENDED,
    TOO_OLD,
    UNKNOWN_GAME,
    Admission,
    NoAdmission,
)
from replayserver.game.admission import GameRow as GameState
from replayserver.save.database import DatabaseUnavailable

NOW = 1_700_000_000
FORCED_END = 18000
WAIT = 60


class Rows:
    """A game_stats lookup whose rows the test sets; counts the lookups."""

    def __init__(self):
        self.rows = {}
        self.lookups = 0

    def game_row(self, game_id):
        self.lookups += 1
        return succeed(self.rows.get(game_id))


class Answers:
    """A lookup that answers with what ``answer(game_id)`` returns."""

    def __init__(self, answer):
        self.game_row = answer


class AdmissionRuleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.rows = Rows()
        self.admission = Admission(self.rows, self.clock, wait=WAIT, forced_end=FORCED_END)

    def decide(self, state):
        self.rows.rows[state.game_id] = state
        return self.successResultOf(self.admission.check(state.game_id))

    def test_live_game_is_accepted(self):
        result = self.decide(GameState(1, NOW - 5, None, False))
        self.assertTrue(result.accepted)

    def test_already_saved_is_refused(self):
        self.assertEqual(self.decide(GameState(1, NOW - 5, None, True)), ALREADY_SAVED)

    def test_ended_game_is_refused(self):
        self.assertEqual(self.decide(GameState(1, NOW - 900, NOW - END_TOLERANCE - 1, False)), ENDED)

    def test_just_ended_game_is_accepted(self):
        self.assertTrue(self.decide(GameState(1, NOW - 900, NOW - END_TOLERANCE, False)).accepted)

    def test_game_older_than_forced_end_is_refused(self):
        self.assertEqual(self.decide(GameState(1, NOW - FORCED_END - 1, None, False)), TOO_OLD)
        self.assertTrue(self.decide(GameState(2, NOW - FORCED_END, None, False)).accepted)

    def test_unknown_game_is_refused_after_the_wait(self):
        d = self.admission.check(7)
        self.assertNoResult(d)
        self.clock.pump([1] * (WAIT - 1))
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), UNKNOWN_GAME)
        self.assertEqual(self.rows.lookups, WAIT + 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_row_appearing_during_the_wait_is_accepted(self):
        d = self.admission.check(7)
        self.clock.pump([1, 1])
        self.assertNoResult(d)
        self.rows.rows[7] = GameState(7, NOW + 2, None, False)
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(d).accepted)
        self.assertEqual(self.rows.lookups, 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_check_stops_polling(self):
        d = self.admission.check(7)
        self.clock.pump([1, 1, 1])
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lookups = self.rows.lookups
        self.clock.pump([1] * WAIT)
        self.assertEqual(self.rows.lookups, lookups)

    def test_cancelled_during_a_lookup(self):
        pending = Deferred()
        admission = Admission(Answers(lambda game_id: pending), self.clock, wait=WAIT,
                              forced_end=FORCED_END)
        d = admission.check(7)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(pending.called)
        pending.callback(GameState(7, NOW, None, False))  # the query's late answer is ignored
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_database_outage_accepts(self):
        admission = Admission(
            Answers(lambda game_id: fail(DatabaseUnavailable("down"))), self.clock,
            wait=WAIT, forced_end=FORCED_END,
        )
        self.assertEqual(self.successResultOf(admission.check(7)), DATABASE_UNAVAILABLE)
        self.assertTrue(DATABASE_UNAVAILABLE.accepted)

    def test_no_admission_accepts_anything(self):
        self.assertTrue(self.successResultOf(NoAdmission().check(7)).accepted)

    def test_lookups_in_flight_are_bounded(self):
        """A crowd of writers for unknown ids cannot take every database connection."""
        pending = []

        def answer(game_id):
            pending.append(Deferred())
            return pending[-1]

        admission = Admission(Answers(answer), self.clock, wait=WAIT, forced_end=FORCED_END,
                              concurrency=2)
        checks = [admission.check(game_id) for game_id in range(5)]
        self.assertEqual(len(pending), 2)
        pending[0].callback(GameState(0, NOW, None, False))
        self.assertTrue(self.successResultOf(checks[0]).accepted)
        self.assertEqual(len(pending), 3)
        for check in reversed(checks[1:]):  # the waiting ones first
            check.cancel()
            self.failureResultOf(check)
        self.assertEqual(len(pending), 3)  # the waiting ones never asked
