"""Admission against a real MariaDB and the real clock: unknown, ended and already saved games
are refused; a game whose row appears 2 s after the check began is accepted."""

import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from replayserver.game.admission import ALREADY_SAVED, ENDED, UNKNOWN_GAME, Admission
from replayserver.save.database import open_database
from tests.support import mariadb

FORCED_END = 18000


class AdmissionDatabaseTests(TestCase):
    def setUp(self):
        self.db = mariadb.database()
        self.database = open_database(self.db.settings(), reactor)
        self.addCleanup(self.database.close)

    def admission(self, wait):
        return Admission(
            self.database, reactor, wait=wait, forced_end=FORCED_END, poll_interval=0.25
        )

    def insert(self, game):
        with self.db.connect() as connection:
            mariadb.insert_game(connection, game)

    @inlineCallbacks
    def test_live_game_is_accepted(self):
        game = mariadb.live_game()
        self.insert(game)
        result = yield self.admission(wait=5).check(game.game_id)
        self.assertTrue(result.accepted)

    @inlineCallbacks
    def test_unknown_game_is_refused(self):
        started = time.monotonic()
        result = yield self.admission(wait=1).check(mariadb.new_game_id())
        self.assertEqual(result, UNKNOWN_GAME)
        self.assertGreaterEqual(time.monotonic() - started, 0.75)

    @inlineCallbacks
    def test_ended_game_is_refused(self):
        result = yield self.admission(wait=5).check(mariadb.GAMES[0].game_id)
        self.assertEqual(result, ENDED)

    @inlineCallbacks
    def test_already_saved_game_is_refused(self):
        game = mariadb.live_game(replay_available=True)
        self.insert(game)
        self.assertEqual((yield self.admission(wait=5).check(game.game_id)), ALREADY_SAVED)

    @inlineCallbacks
    def test_row_appearing_two_seconds_later_is_accepted(self):
        game = mariadb.live_game()
        started = time.monotonic()
        reactor.callLater(2, self.insert, game)
        result = yield self.admission(wait=10).check(game.game_id)
        self.assertTrue(result.accepted)
        self.assertGreaterEqual(time.monotonic() - started, 2)
