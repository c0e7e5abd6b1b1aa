"""DatabaseIndex against a real MariaDB: the write-back of replay_ticks / replay_available and
the is_saved lookup."""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from replayserver.save.database import DatabaseIndex, open_database
from tests.support import mariadb


class DatabaseIndexTests(TestCase):
    def setUp(self):
        self.db = mariadb.database()
        self.database = open_database(self.db.settings(), reactor)
        self.addCleanup(self.database.close)
        self.index = DatabaseIndex(self.database)

    def new_game(self, game_id=None):
        game = mariadb.Game(
            game_id or mariadb.new_game_id(), mariadb.FAF, "user1", "Index", "DEMORALIZATION",
            mariadb.BASE_TIME, mariadb.BASE_TIME + 60, None, (mariadb.Player("user1", 1),),
        )
        with self.db.connect() as connection:
            mariadb.insert_game(connection, game)
        return game.game_id

    def row(self, game_id):
        with self.db.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT replay_ticks, replay_available FROM game_stats WHERE id = %s", (game_id,)
            )
            return cursor.fetchone()

    @inlineCallbacks
    def test_mark_saved_writes_ticks_and_availability(self):
        game_id = self.new_game()
        self.assertEqual(self.row(game_id), (None, 0))
        self.assertFalse((yield self.index.is_saved(game_id)))
        yield self.index.mark_saved(game_id, 28917)
        self.assertEqual(self.row(game_id), (28917, 1))
        self.assertTrue((yield self.index.is_saved(game_id)))

    @inlineCallbacks
    def test_id_above_two_to_the_31(self):
        game_id = self.new_game(3_000_000_000 + mariadb.new_game_id())
        yield self.index.mark_saved(game_id, 154)
        self.assertEqual(self.row(game_id), (154, 1))
        self.assertTrue((yield self.index.is_saved(game_id)))

    @inlineCallbacks
    def test_unknown_game_is_not_saved_and_gets_no_row(self):
        game_id = mariadb.new_game_id()
        self.assertFalse((yield self.index.is_saved(game_id)))
        yield self.index.mark_saved(game_id, 10)
        self.assertIsNone(self.row(game_id))

    @inlineCallbacks
    def test_marking_again_keeps_the_replay_available(self):
        game_id = self.new_game()
        yield self.index.mark_saved(game_id, 100)
        yield self.index.mark_saved(game_id, 120)
        self.assertEqual(self.row(game_id), (120, 1))

    @inlineCallbacks
    def test_write_back_counts_matched_rows(self):
        game_id = self.new_game()
        self.assertEqual((yield self.database.mark_saved(game_id, 100)), 1)
        self.assertEqual((yield self.database.mark_saved(game_id, 100)), 1)
        self.assertEqual((yield self.database.mark_saved(mariadb.new_game_id(), 100)), 0)
