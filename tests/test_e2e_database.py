"""End to end with a database, against a real `twistd -n replayserver` process: the saved file's
JSON, the write-back to game_stats, pool connections killed between games, a database outage
during a game, and the admission of writers."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import attrs
import fafreplay
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayserver.replay.container import read_fafreplay
from tests.support import mariadb, samples
from tests.support.server import ServerProcess, send_stream, temporary_directory
from tests.support.tcpproxy import TcpProxy

SAMPLE = samples.read("8805603.scfareplay")
TICKS = fafreplay.body_ticks(SAMPLE[fafreplay.body_offset(SAMPLE):])
ADMISSION_WAIT = 4


def database_section(db: mariadb.TestDatabase, **changes) -> dict:
    return vars(db.settings()) | {"pool_size": 2} | changes


def insert(db: mariadb.TestDatabase, game: mariadb.Game) -> None:
    with db.connect() as connection:
        mariadb.insert_game(connection, game)


def end_game(db: mariadb.TestDatabase, game: mariadb.Game) -> mariadb.Game:
    """Set endTime as the lobby server does when the game is over."""
    ended = attrs.evolve(game, end=int(time.time()))
    with db.connect() as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE game_stats SET endTime = FROM_UNIXTIME(%s) WHERE id = %s",
                       (ended.end, game.game_id))
    return ended


def replay_row(db: mariadb.TestDatabase, game_id: int) -> tuple:
    with db.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT replay_ticks, replay_available FROM game_stats WHERE id = %s",
                       (game_id,))
        return cursor.fetchone()


class DatabaseEndToEndTests(SynchronousTestCase):
    def setUp(self):
        self.db = mariadb.database()

    def start(self, **sections):
        server = ServerProcess(temporary_directory(self), {"database": database_section(self.db), **sections})
        self.addCleanup(server.kill)
        return server.start()

    def play(self, server, game):
        """One writer streams the whole sample, the lobby sets endTime, the writer closes."""
        connection = server.connect("P", game.game_id, "user1.SCFAreplay")
        send_stream(connection, SAMPLE, close=False)
        ended = end_game(self.db, game)
        connection.close()
        return ended

    def assert_saved(self, server, game):
        replay = read_fafreplay(server.wait_for_file(game.game_id))
        expected = mariadb.expected_metadata(game, 0) | {"compression": "zstd", "version": 2}
        self.assertEqual(sorted(replay.metadata), sorted(expected))
        for key, value in expected.items():
            self.assertEqual(replay.metadata[key], value, key)
        self.assertEqual(replay.scfa, SAMPLE)
        deadline = time.monotonic() + 10
        while replay_row(self.db, game.game_id) != (TICKS, 1):
            self.assertLess(time.monotonic(), deadline, replay_row(self.db, game.game_id))
            time.sleep(0.05)

    def test_saved_file_and_write_back_and_killed_connections(self):
        server = self.start()
        first = mariadb.live_game()
        insert(self.db, first)
        self.assert_saved(server, self.play(server, first))

        with self.db.connect() as admin, admin.cursor() as cursor:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> %s",
                (self.db.name, admin.thread_id()),
            )
            pool = [row[0] for row in cursor.fetchall()]
            self.assertTrue(pool)
            for connection_id in pool:
                cursor.execute("KILL %s", (connection_id,))

        second = mariadb.live_game(players=(mariadb.Player("玩家四", 1),
                                            mariadb.Player("AI", 2, ai=True)))
        insert(self.db, second)
        self.assert_saved(server, self.play(server, second))

    def test_admission(self):
        server = self.start(admission={"require_live_game": True, "wait": ADMISSION_WAIT})
        threads = ThreadPoolExecutor(max_workers=4)
        self.addCleanup(threads.shutdown)
        saved = mariadb.live_game(replay_available=True)
        insert(self.db, saved)
        ended = mariadb.GAMES[0]
        unknown = mariadb.new_game_id()
        refused = {
            game_id: threads.submit(closed_by_server, server, game_id)
            for game_id in (unknown, ended.game_id, saved.game_id)
        }
        late = mariadb.live_game()
        connection = server.connect("P", late.game_id, "user1.SCFAreplay")
        send_stream(connection, SAMPLE, close=False)
        time.sleep(2)
        insert(self.db, late)
        time.sleep(1)
        late = end_game(self.db, late)
        connection.close()
        self.assert_saved(server, late)
        for game_id, closed in refused.items():
            self.assertTrue(closed.result(timeout=ADMISSION_WAIT + 10), game_id)
            self.assertFalse(server.replay_path(game_id).exists(), game_id)
        self.assertEqual(replay_row(self.db, ended.game_id), (None, 0))
        self.assertEqual(replay_row(self.db, saved.game_id), (None, 1))
        log = server.log()
        for reason in ("no game_stats row", "game ended", "replay already available"):
            self.assertIn(reason, log)


def closed_by_server(server: ServerProcess, game_id: int) -> bool:
    """A writer that sends the sample's first bytes: True once the server closes it."""
    connection = server.connect("P", game_id, "refused.SCFAreplay")
    with connection:
        connection.settimeout(ADMISSION_WAIT + 5)
        try:
            connection.sendall(SAMPLE[:1024])
            return connection.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


class DatabaseOutageEndToEndTests(TestCase):
    """The database goes away (its proxy closes) during a game and comes back later."""

    @inlineCallbacks
    def test_replay_saved_with_full_metadata_once_back(self):
        db = mariadb.database()
        proxy = TcpProxy(reactor, db.address.host, db.address.port)
        proxy.start()
        self.addCleanup(proxy.close)
        section = database_section(db, host="127.0.0.1", port=proxy.port)
        server = ServerProcess(temporary_directory(self), {"database": section})
        self.addCleanup(server.kill)
        yield deferToThread(server.start)
        game = mariadb.live_game()
        insert(db, game)
        connection = server.connect("P", game.game_id, "user1.SCFAreplay")
        yield deferToThread(send_stream, connection, SAMPLE, close=False)
        yield proxy.stop()
        game = end_game(db, game)
        connection.close()
        yield deferToThread(time.sleep, 3)
        self.assertFalse(server.replay_path(game.game_id).exists())
        self.assertIn("pending", server.log())
        proxy.start()
        replay = read_fafreplay((yield deferToThread(server.wait_for_file, game.game_id, 30)))
        expected = mariadb.expected_metadata(game, 0) | {"compression": "zstd", "version": 2}
        self.assertEqual(replay.metadata, expected)
        self.assertEqual(replay.scfa, SAMPLE)
        deadline = time.monotonic() + 30
        while replay_row(db, game.game_id) != (TICKS, 1):
            self.assertLess(time.monotonic(), deadline)
            yield deferToThread(time.sleep, 0.1)


#: A password with shell- and YAML-special characters.
SPECIAL_PASSWORD = "p#ss: w'o\"rd x"


class DatabasePasswordEndToEndTests(SynchronousTestCase):
    """REPLAYSERVER_DATABASE_PASSWORD reaches the server as it is; a wrong one is logged as
    access denied and never makes a SIGTERM wait beyond server.shutdown_timeout."""

    SHUTDOWN_TIMEOUT = 3

    def setUp(self):
        self.db = mariadb.database()
        self.user = self.db.create_user(SPECIAL_PASSWORD)
        self.directory = temporary_directory(self)

    def server(self, password: str) -> ServerProcess:
        section = {key: value for key, value in database_section(self.db, user=self.user).items()
                   if key != "password"}  # from the environment only
        settings = {"database": section, "server": {"shutdown_timeout": self.SHUTDOWN_TIMEOUT}}
        server = ServerProcess(self.directory, settings,
                               environment={"REPLAYSERVER_DATABASE_PASSWORD": password})
        self.addCleanup(server.kill)
        return server.start()

    def play(self, server: ServerProcess) -> mariadb.Game:
        game = mariadb.live_game()
        insert(self.db, game)
        connection = server.connect("P", game.game_id, "user1.SCFAreplay")
        send_stream(connection, SAMPLE, close=False)
        game = end_game(self.db, game)
        connection.close()
        return game

    def assert_saved(self, server: ServerProcess, game: mariadb.Game) -> None:
        replay = read_fafreplay(server.wait_for_file(game.game_id, timeout=30))
        expected = mariadb.expected_metadata(game, 0) | {"compression": "zstd", "version": 2}
        self.assertEqual(replay.metadata, expected)
        self.assertEqual(replay.scfa, SAMPLE)
        deadline = time.monotonic() + 10
        while replay_row(self.db, game.game_id) != (TICKS, 1):
            self.assertLess(time.monotonic(), deadline, replay_row(self.db, game.game_id))
            time.sleep(0.05)

    def test_a_password_with_special_characters(self):
        server = self.server(SPECIAL_PASSWORD)
        self.assert_saved(server, self.play(server))
        self.assertNotIn("access denied", server.log())

    def test_a_wrong_password_then_the_right_one(self):
        server = self.server("not " + SPECIAL_PASSWORD)
        game = self.play(server)
        denied = f"Saving game {game.game_id} failed at its metadata: DatabaseAccessDenied:" \
                 f" database access denied for user {self.user!r}"

        def lines() -> list[str]:
            return [line for line in server.log().splitlines() if denied in line]

        deadline = time.monotonic() + 20
        while not lines():
            self.assertLess(time.monotonic(), deadline, server.log())
            time.sleep(0.05)
        time.sleep(5)  # attempts 1, 2 and 4 s apart: 3 or 4 in 5 s, not one per query
        self.assertIn(len(lines()), (3, 4), lines())
        for line in lines():
            self.assertIn("REPLAYSERVER_DATABASE_PASSWORD", line)
            if "[worker-" not in line:  # worker lines show the worker, not the level
                self.assertIn("#error]", line)
        self.assertFalse(server.replay_path(game.game_id).exists())

        stopping = time.monotonic()
        server.terminate(timeout=30)
        stopped_in = time.monotonic() - stopping
        self.assertLess(stopped_in, self.SHUTDOWN_TIMEOUT + 3, server.log())
        self.assertRegex(server.log(), rf"Game {game.game_id} ended \(.*\): .*, not"
                                       r" saved before the shutdown; its spool is kept")
        self.assertTrue(list(server.spool.rglob(f"{game.game_id}/*.stream")))

        restarted = self.server(SPECIAL_PASSWORD)
        self.assert_saved(restarted, game)
