"""DatabaseMetadata against a real MariaDB: REFERENCE 7's keys and JSON types for every fixture
game, and the missing-row rule (retry, then header-derived metadata)."""

import json
import types

import pymysql

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from replayserver.save.database import DatabaseMetadata, GameRowMissing, open_database
from tests.support import mariadb

ENDED_AT = 1_700_000_000.75
STARTED_AT = 1_699_990_000.5


def expected_metadata(game: mariadb.Game) -> dict:
    return mariadb.expected_metadata(game, ENDED_AT)


class HeaderMetadata:
    """Stands in for the header-derived metadata source; records its calls."""

    def __init__(self) -> None:
        self.calls = []

    def metadata(self, game_id, header, started_at, ended_at):
        self.calls.append((game_id, header, started_at, ended_at))
        return succeed({"uid": game_id, "from": "header"})


class DatabaseMetadataTests(TestCase):
    def setUp(self):
        self.db = mariadb.database()
        self.database = open_database(self.db.settings(), reactor)
        self.addCleanup(self.database.close)
        self.clock = Clock()
        self.fallback = HeaderMetadata()
        self.source = DatabaseMetadata(self.database, self.fallback, self.clock, 300)

    def metadata(self, game_id):
        return self.source.metadata(game_id, "header", STARTED_AT, ENDED_AT)

    @inlineCallbacks
    def test_every_fixture_game_key_by_key(self):
        for game in mariadb.GAMES:
            found = yield self.metadata(game.game_id)
            expected = expected_metadata(game)
            self.assertEqual(sorted(found), sorted(expected), game.title)
            for key, value in expected.items():
                self.assertEqual(found[key], value, f"{game.title}: {key}")
        self.assertEqual(self.fallback.calls, [])

    @inlineCallbacks
    def test_json_types(self):
        game = mariadb.GAMES[0]
        found = yield self.metadata(game.game_id)
        self.assertEqual(json.loads(json.dumps(found)), found)
        for key in ("uid", "launched_at", "game_end", "num_players"):
            self.assertIs(type(found[key]), int, key)
        for key in ("featured_mod", "game_type", "host", "recorder", "title", "mapname"):
            self.assertIs(type(found[key]), str, key)
        self.assertIs(found["complete"], True)
        self.assertTrue(all(type(v) is int for v in found["featured_mod_versions"].values()))

    @inlineCallbacks
    def test_faf_is_mod_zero(self):
        game = mariadb.GAMES[0]
        self.assertEqual(game.mod.id, 0)
        found = yield self.metadata(game.game_id)
        self.assertEqual(found["featured_mod"], "faf")
        self.assertEqual(found["featured_mod_versions"], {"41": 3659, "42": 3659, "43": 3656})

    @inlineCallbacks
    def test_unsafe_mod_name_reaches_no_table_name(self):
        game = next(g for g in mariadb.GAMES if g.mod is mariadb.UNSAFE)
        found = yield self.metadata(game.game_id)
        self.assertEqual(found["featured_mod_versions"], {})
        with self.db.connect() as connection, connection.cursor() as cursor:
            self.assertEqual(cursor.execute("SELECT id FROM login"), len(mariadb._LOGINS))

    @inlineCallbacks
    def test_null_end_time_gives_the_save_time(self):
        game = next(g for g in mariadb.GAMES if g.end is None)
        found = yield self.metadata(game.game_id)
        self.assertEqual(found["game_end"], int(ENDED_AT))

    @inlineCallbacks
    def test_missing_row_is_transient_then_header_metadata(self):
        game_id = mariadb.new_game_id()
        yield self.assertFailure(self.metadata(game_id), GameRowMissing)
        self.clock.advance(299)
        yield self.assertFailure(self.metadata(game_id), GameRowMissing)
        self.clock.advance(1)
        found = yield self.metadata(game_id)
        self.assertEqual(found, {"uid": game_id, "from": "header"})
        self.assertEqual(self.fallback.calls, [(game_id, "header", STARTED_AT, ENDED_AT)])

    @inlineCallbacks
    def test_row_appearing_late_gives_database_metadata(self):
        game = mariadb.Game(
            mariadb.new_game_id(), mariadb.FAF, "user3", "Late row", "DOMINATION",
            mariadb.BASE_TIME, None, "scmp_009", (mariadb.Player("user3", 1),),
        )
        yield self.assertFailure(self.metadata(game.game_id), GameRowMissing)
        self.clock.advance(200)
        with self.db.connect() as connection:
            mariadb.insert_game(connection, game)
        found = yield self.metadata(game.game_id)
        self.assertEqual(found, expected_metadata(game))
        self.assertEqual(self.fallback.calls, [])


class SchemaErrorTests(TestCase):
    @inlineCallbacks
    def test_sql_error_falls_back_to_header_metadata(self):
        """A database without FAF's tables (a schema error, not an outage) costs no replay."""
        settings = vars(mariadb.database().settings()) | {"name": "mysql"}
        database = open_database(types.SimpleNamespace(**settings), reactor)
        self.addCleanup(database.close)
        fallback = HeaderMetadata()
        source = DatabaseMetadata(database, fallback, Clock())
        found = yield source.metadata(2000, "header", STARTED_AT, ENDED_AT)
        self.assertEqual(found, {"uid": 2000, "from": "header"})
        self.assertEqual(len(self.flushLoggedErrors(pymysql.ProgrammingError)), 1)
