"""End to end, through ``twistd -n replayserver``: the spool and crash recovery never destroy a
replay (docs/saving.md).

* A crash (SIGKILL) with games spooled, a restart, and stray connections for the spooled ids
  while recovery runs (made long by large spooled games): the strays are refused, and every
  spooled replay is saved whole.
* One unreadable spool file fails its game alone; the game is saved once it is readable again.
* Two servers pointed at one spool: the second refuses to start, with one line.
* With a database, a crash between the vault write and the database update: the restart makes
  the update (``replay_ticks``, ``replay_available = 1``), then removes the spool.

Both modes: run the file with ``REPLAYSERVER_SERVER_WORKERS=1`` and ``=2``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import fafreplay
from twisted.trial.unittest import SynchronousTestCase

from tests.test_merge_helpers import merge_streams
from replayserver.replay.container import read_fafreplay, write_fafreplay
from replayserver.replay.header import parse_header
from tests.support import mariadb, samples
from tests.support.server import REPO_ROOT, ServerProcess, temporary_directory

#: Two players' streams of one 2.9 MB game: a large game to recover.
LARGE = [samples.read("8604509.scfareplay"), samples.read("8604509-EcoNoob.scfareplay")]
SMALL = samples.read("8945286.scfareplay")
OTHER = samples.read("8805603.scfareplay")
#: Long enough that no game ends by itself during a test.
SETTINGS = {"replay": {"delay": 0.5, "grace_period": 60}}
#: A run of the server that crashed an hour ago (the run directories' name scheme).
OLD_RUN = "run-20000101T000000-1-0"


def spool_game(spool: Path, run: str, game_id: int, streams: list[bytes],
               age: float = 3600.0) -> list[Path]:
    """Lay out a game as a crashed run leaves it in the spool (docs/saving.md, "The spool"),
    its files last written ``age`` seconds ago; returns the stream files."""
    directory = spool / run / str(game_id)
    directory.mkdir(parents=True)
    when = time.time() - age
    paths = []
    for index, data in enumerate(streams):
        sidecar = directory / f"{index}.json"
        sidecar.write_text(json.dumps({"name": f"player{index}", "opened_at": when - 60}))
        path = directory / f"{index}.stream"
        path.write_bytes(data)
        os.utime(path, (when, when))
        paths.append(path)
    return paths


def refused(connection: socket.socket, data: bytes = b"", timeout: float = 30.0) -> bool:
    """Send ``data`` (then keep the connection open); True once the server closes it."""
    connection.settimeout(timeout)
    with connection:
        try:
            if data:
                connection.sendall(data)
            return connection.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout} s")
        time.sleep(0.05)


class CrashRecoveryTests(SynchronousTestCase):
    def test_stray_connections_during_recovery_are_refused_and_nothing_is_lost(self):
        directory = temporary_directory(self)
        server = ServerProcess(directory, SETTINGS).start()
        self.addCleanup(server.kill)
        # Two running games: two writers each, the header and part of the body sent.
        sent = {}
        connections = []
        for game_id, data in ((7001, SMALL), (7002, OTHER)):
            part = parse_header(data).size + (len(data) - parse_header(data).size) // 2
            for index in range(2):
                connection = server.connect("P", game_id, f"w{index}")
                connection.sendall(data[:part])
                connections.append(connection)
            sent[game_id] = data[:part]
        time.sleep(1.5)  # more than the spool's flush interval
        server.kill()
        for connection in connections:
            connection.close()
        # Large games of an older crash, recovered first: they make the recovery last.
        large = list(range(7100, 7110))
        for game_id in large:
            spool_game(server.spool, OLD_RUN, game_id, LARGE)

        server.start()
        # Stray connections for the ids being recovered: one with a (different) replay, one
        # that never sends a header, one for a large game.
        strays = {
            7001: refused(server.connect("P", 7001, "stray"), OTHER),
            7002: refused(server.connect("P", 7002, "stray")),
            large[-1]: refused(server.connect("P", large[-1], "stray"), SMALL[:3000]),
        }
        self.assertEqual(strays, dict.fromkeys(strays, True))
        whole = merge_streams(LARGE)
        for game_id in large:
            saved = read_fafreplay(server.wait_for_file(game_id, timeout=120)).scfa
            self.assertTrue(saved == whole.header_raw + whole.body(), f"game {game_id}")
        for game_id, data in sent.items():
            saved = read_fafreplay(server.wait_for_file(game_id, timeout=60)).scfa
            self.assertTrue(saved == data, f"game {game_id}: {len(saved)} bytes saved,"
                                           f" {len(data)} spooled")
        log = server.log()
        for game_id in strays:  # refused because recovery had not saved the game yet
            self.assertIn(f"game {game_id} is being recovered from the spool", log)
        wait_for(lambda: not list(server.spool.rglob("*.stream")), "the spool's removal")
        server.terminate()
        self.assertNotIn("Traceback", server.log())

    def test_an_unreadable_spool_file_fails_its_game_alone(self):
        directory = temporary_directory(self)
        server = ServerProcess(directory, SETTINGS)
        games = {7201: [SMALL], 7202: [SMALL, SMALL], 7203: [OTHER]}
        paths = {game_id: spool_game(server.spool, OLD_RUN, game_id, streams)
                 for game_id, streams in games.items()}
        broken = paths[7202][1]
        broken.unlink()
        broken.mkdir()  # tests run as root, who reads any file: a directory cannot be read
        (broken / "inside").write_bytes(b"x")
        server.start()
        self.addCleanup(server.kill)
        self.assertEqual(read_fafreplay(server.wait_for_file(7201)).scfa, SMALL)
        self.assertEqual(read_fafreplay(server.wait_for_file(7203)).scfa, OTHER)
        wait_for(lambda: "Recovering game 7202 failed: cannot read" in server.log(),
                 "the failure's log line")
        self.assertFalse(server.replay_path(7202).exists())
        # logged with the file's path (where it is now: workers have their own spools)
        (moved,) = [path for path in server.spool.rglob("1.stream") if path.is_dir()]
        self.assertIn(str(moved), server.log())
        # a writer for it is still refused: its recovery is not over
        self.assertTrue(refused(server.connect("P", 7202, "stray"), OTHER))
        shutil.rmtree(moved)
        moved.write_bytes(SMALL)
        self.assertEqual(read_fafreplay(server.wait_for_file(7202, timeout=60)).scfa, SMALL)
        wait_for(lambda: not list(server.spool.rglob("*.stream")), "the spool's removal")
        server.terminate()

    def test_a_second_server_on_the_same_spool_refuses_to_start(self):
        first = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(first.kill)
        second = ServerProcess(temporary_directory(self),
                               {**SETTINGS, "storage": {"spool": str(first.spool)}})
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(second.command(), cwd=second.directory, env=environment,
                                capture_output=True, text=True, timeout=60)
        output = (result.stdout + result.stderr).strip()
        self.assertEqual(result.returncode, 1, output)
        self.assertEqual(len(output.splitlines()), 1, output)
        self.assertIn("storage.spool", output)
        self.assertNotIn("Traceback", output)
        # the first server is untouched: it still saves games
        connection = first.connect("P", 7301, "player")
        connection.sendall(SMALL)
        wait_for(lambda: "Game 7301 created" in first.log(), "the game's creation")
        connection.close()
        first.terminate()
        self.assertEqual(read_fafreplay(first.replay_path(7301).read_bytes()).scfa, SMALL)


class VaultWrittenDatabaseNotTests(SynchronousTestCase):
    def test_the_index_update_is_made_before_the_spool_goes(self):
        db = mariadb.database()
        game = mariadb.live_game()
        with db.connect() as connection:
            mariadb.insert_game(connection, game)
        server = ServerProcess(temporary_directory(self), {
            **SETTINGS, "database": vars(db.settings()) | {"pool_size": 2}})
        # the crashed run had written the file, not yet the database update
        stored = server.replay_path(game.game_id)
        stored.parent.mkdir(parents=True)
        with open(stored, "wb") as out:
            write_fafreplay(out, {"uid": game.game_id, "note": "written before the crash"},
                            [OTHER])
        before = stored.read_bytes()
        spool_game(server.spool, OLD_RUN, game.game_id, [OTHER[:2000], OTHER])
        self.assertEqual(self.row(db, game.game_id), (None, 0))
        server.start()
        self.addCleanup(server.kill)
        wait_for(lambda: not list(server.spool.rglob(f"{game.game_id}/*.stream")),
                 "the spool's removal")
        # the spool went only after the update: the row is already there when it is gone
        body = OTHER[fafreplay.body_offset(OTHER):]
        self.assertEqual(self.row(db, game.game_id), (fafreplay.body_ticks(body), 1))
        self.assertEqual(stored.read_bytes(), before)  # never written again
        server.terminate()

    def row(self, db: mariadb.TestDatabase, game_id: int) -> tuple:
        with db.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT replay_ticks, replay_available FROM game_stats WHERE id = %s",
                           (game_id,))
            return cursor.fetchone()
