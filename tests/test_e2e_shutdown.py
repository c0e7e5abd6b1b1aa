"""End to end: SIGTERM saves every running game before exit; after kill -9, a restart saves
every game from the spool with its data up to about the last second."""
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess, joined, receive_all, temporary_directory

#: Long enough that no game ends by itself during a test.
SETTINGS = {"replay": {"delay": 1, "grace_period": 60}}
GAMES = {4001: "diverging_1/5", 4002: "8805603.scfareplay", 4003: "8945286.scfareplay"}


class ShutdownTests(SynchronousTestCase):
    def start_games(self, server: ServerProcess) -> dict:
        """Every game gets two writers that sent the header and part of the body, still open."""
        writers = {}
        for game_id, name in GAMES.items():
            data = samples.read(name)
            part = parse_header(data).size + (len(data) - parse_header(data).size) // 2
            connections = [server.connect("P", game_id, f"w{i}") for i in range(2)]
            for connection in connections:
                connection.sendall(data[:part])
            writers[game_id] = (connections, data[:part])
        return writers

    def saved(self, server: ServerProcess, game_id: int) -> bytes:
        return read_fafreplay(server.wait_for_file(game_id)).scfa

    def test_sigterm_saves_every_running_game(self):
        server = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(server.kill)
        writers = self.start_games(server)
        time.sleep(0.3)
        readers = {game_id: server.connect("G", game_id, "watcher") for game_id in GAMES}
        time.sleep(0.2)
        # twistd ends by re-raising the signal that stopped it, after a clean shutdown
        self.assertIn(server.terminate(timeout=20), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", server.log())
        for game_id, (_, sent) in writers.items():
            self.assertTrue(server.replay_path(game_id).exists(), server.log())
            self.assertTrue(self.saved(server, game_id) == sent, f"game {game_id}")
            # readers got everything, then the connection was closed
            self.assertTrue(joined(receive_all(readers[game_id])) == sent, f"game {game_id}")
        self.assertEqual(list(server.spool.glob("*/*")), [])
        self.assertNotIn("Traceback", server.log())

    def test_kill_9_then_restart_recovers_every_game(self):
        server = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(server.kill)
        writers = self.start_games(server)
        time.sleep(1.5)  # more than the spool's flush interval
        for game_id, (connections, sent) in writers.items():
            connections[0].sendall(b"\x00\x07\x00" * 3)  # sent in the last second: may be lost
        server.kill()
        for connections, _ in writers.values():
            for connection in connections:
                connection.close()
        self.assertFalse(any(server.replay_path(game_id).exists() for game_id in GAMES))

        server.start()
        for game_id, (_, sent) in writers.items():
            saved = self.saved(server, game_id)
            header = parse_header(sent).size
            self.assertEqual(saved[:header], sent[:header])
            self.assertTrue(saved[: len(sent)] == sent, f"game {game_id} lost data")
            self.assertLessEqual(len(saved), len(sent) + 9)
        deadline = time.monotonic() + 10
        while list(server.spool.glob("run-*/4*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(list(server.spool.glob("run-*/4*")), [])
        # a recovered game is not created again by a late writer
        late = server.connect("P", 4001, "late")
        late.settimeout(5)  # an accepted writer would be kept open: recv would time out
        self.assertEqual(joined(receive_all(late)), b"")
        self.assertIn("Recovering 3 games", server.log())
