"""The pool against a real MariaDB: connections killed server-side are replaced without an error
reaching the caller; an unreachable database fails as DatabaseUnavailable and works again once
it is back; access denied is named as such; other errors are not mistaken for outages."""

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from replayserver.save.database import (
    DatabaseAccessDenied,
    DatabaseMetadata,
    DatabaseUnavailable,
    GameRowMissing,
    open_database,
)
from tests.support import mariadb
from tests.support.tcpproxy import TcpProxy
from tests.test_database_metadata import ENDED_AT, STARTED_AT, HeaderMetadata, expected_metadata

POOL_SIZE = 3


def _connection_id(cursor):
    cursor.execute("SELECT CONNECTION_ID()")
    return cursor.fetchone()[0]


def _slow_connection_id(cursor):
    cursor.execute("SELECT SLEEP(0.2)")
    return _connection_id(cursor)


class KilledConnectionTests(TestCase):
    def setUp(self):
        self.db = mariadb.database()
        self.database = open_database(self.db.settings(pool_size=POOL_SIZE), reactor)
        self.addCleanup(self.database.close)

    def pool_connections(self):
        """Open every connection of the pool (concurrent slow queries); fires with their ids."""
        runs = [self.database.run(_slow_connection_id) for _ in range(POOL_SIZE)]
        return gatherResults(runs).addCallback(set)

    def kill(self, connection_ids):
        with self.db.address.connect() as connection, connection.cursor() as cursor:
            for connection_id in connection_ids:
                cursor.execute("KILL %s", (connection_id,))

    @inlineCallbacks
    def test_next_game_after_kill_is_served(self):
        before = yield self.pool_connections()
        self.assertEqual(len(before), POOL_SIZE)
        self.kill(before)
        game = mariadb.GAMES[0]
        metadata = DatabaseMetadata(self.database, HeaderMetadata(), Clock())
        results = yield gatherResults(
            [metadata.metadata(game.game_id, None, STARTED_AT, ENDED_AT) for _ in range(POOL_SIZE)]
        )
        self.assertEqual(results, [expected_metadata(game)] * POOL_SIZE)
        after = yield self.pool_connections()
        self.assertFalse(after & before)

    @inlineCallbacks
    def test_other_errors_are_not_outages(self):
        def bad_query(cursor):
            cursor.execute("SELECT no_such_column FROM game_stats")

        error = yield self.assertFailure(self.database.run(bad_query), pymysql.Error)
        self.assertEqual(error.args[0], 1054)
        self.assertEqual(len((yield self.pool_connections())), POOL_SIZE)


class OutageTests(TestCase):
    def setUp(self):
        self.db = mariadb.database()
        self.proxy = TcpProxy(reactor, self.db.address.host, self.db.address.port)
        self.proxy.start()
        self.addCleanup(self.proxy.close)
        settings = self.db.settings(host="127.0.0.1", port=self.proxy.port)
        self.database = open_database(settings, reactor)
        self.addCleanup(self.database.close)
        self.source = DatabaseMetadata(self.database, HeaderMetadata(), Clock())
        self.game = mariadb.GAMES[0]

    def metadata(self):
        return self.source.metadata(self.game.game_id, None, STARTED_AT, ENDED_AT)

    @inlineCallbacks
    def test_unreachable_database_is_transient(self):
        self.assertEqual((yield self.metadata()), expected_metadata(self.game))
        yield self.proxy.stop()
        yield self.assertFailure(self.metadata(), DatabaseUnavailable)
        yield self.assertFailure(self.database.game_row(self.game.game_id), DatabaseUnavailable)
        self.proxy.start()
        self.assertEqual((yield self.metadata()), expected_metadata(self.game))

    @inlineCallbacks
    def test_retried_save_gets_full_metadata_once_back(self):
        """A retry loop like the saver's: fails while the database is away, then succeeds."""
        yield self.proxy.stop()
        reactor_clock = reactor
        reactor_clock.callLater(1.0, self.proxy.start)
        failures = []
        while True:
            try:
                found = yield self.metadata()
                break
            except (DatabaseUnavailable, GameRowMissing) as error:
                failures.append(error)
                yield deferLater(reactor_clock, 0.2, lambda: None)
        self.assertTrue(failures)
        self.assertTrue(all(isinstance(error, DatabaseUnavailable) for error in failures))
        self.assertEqual(found, expected_metadata(self.game))


class AccessDeniedTests(TestCase):
    """A wrong password (1045) or a user without rights on the database (1044) is reported as
    such, by every path: metadata, admission lookups, the health check."""

    PASSWORD = "p#ss: w'o\"rd x"

    def setUp(self):
        self.db = mariadb.database()

    def open(self, user, password):
        database = open_database(self.db.settings(user=user, password=password), reactor)
        self.addCleanup(database.close)
        return database

    @inlineCallbacks
    def test_wrong_password(self):
        user = self.db.create_user(self.PASSWORD)
        database = self.open(user, "not the password")
        game = mariadb.GAMES[0]
        metadata = DatabaseMetadata(database, HeaderMetadata(), Clock())
        for attempt in (database.ping(), database.game_row(game.game_id),
                        metadata.metadata(game.game_id, None, STARTED_AT, ENDED_AT)):
            error = yield self.assertFailure(attempt, DatabaseAccessDenied)
            self.assertIsInstance(error, DatabaseUnavailable)  # retried like any outage
            self.assertIn(f"database access denied for user {user!r}", str(error))
            self.assertIn("REPLAYSERVER_DATABASE_PASSWORD", str(error))

    @inlineCallbacks
    def test_user_without_rights_on_the_database(self):
        user = self.db.create_user(self.PASSWORD, grant=False)
        error = yield self.assertFailure(self.open(user, self.PASSWORD).ping(),
                                         DatabaseAccessDenied)
        self.assertIn("1044", str(error))

    @inlineCallbacks
    def test_the_right_password_with_special_characters(self):
        user = self.db.create_user(self.PASSWORD)
        database = self.open(user, self.PASSWORD)
        yield database.ping()
        game = mariadb.GAMES[0]
        metadata = DatabaseMetadata(database, HeaderMetadata(), Clock())
        self.assertEqual((yield metadata.metadata(game.game_id, None, STARTED_AT, ENDED_AT)),
                         expected_metadata(game))
